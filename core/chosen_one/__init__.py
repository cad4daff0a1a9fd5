"""The Chosen One (Avrahami et al. 2023): iterative clustering + LoRA/textual-inversion refinement."""
