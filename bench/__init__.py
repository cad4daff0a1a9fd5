"""Benchmarks in the sprite world: identity consistency, prompt conformity, validity and cost."""
