"""Diffusion Self-Distillation (Cai et al. 2025): grid pairs, filtering, and the two-frame FLUX."""
