"""OneActor (Wang et al. 2024): a projector from UNet features to a word offset, and cluster guidance."""
