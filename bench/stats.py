"""How far a benchmark's identity consistency can be trusted.

A run of 24 characters moves by ±10 points from one seed set to the next (bench/results/sprite_methods.md,
sessions 18–20), because a character's pairs mostly agree all together or not at all. So the benchmark reports,
with each consistency, an interval from resampling whole characters, and `bench.pool` pools runs of several seed
sets into one score over all their characters.
"""

from __future__ import annotations

import numpy as np

from .harness import same_character_pairs


def character_pairs(identities: list, character_of: list[int]) -> list[tuple[int, int]]:
    """(agreeing pairs, pairs) of each character, in the order characters first appear. A pair agrees when the
    oracle reads both images (not None) and reads the same identity."""
    counts = {owner: [0, 0] for owner in character_of}
    for i, j in same_character_pairs(character_of):
        counts[character_of[i]][0] += identities[i] is not None and identities[i] == identities[j]
        counts[character_of[i]][1] += 1
    return [(agree, pairs) for agree, pairs in counts.values()]


def pooled_share(counts: list[tuple[int, int]]) -> float:
    pairs = sum(n for _, n in counts)
    return sum(a for a, _ in counts) / pairs if pairs else float("nan")


def bootstrap_interval(counts: list[tuple[int, int]], level: float = 0.95, draws: int = 2000,
                       seed: int = 0) -> tuple[float, float]:
    """The central `level` interval of the pooled share when the characters are drawn again with replacement."""
    if not counts:
        return float("nan"), float("nan")
    agree, pairs = (np.array(column, dtype=float) for column in zip(*counts))
    picks = np.random.default_rng(seed).integers(0, len(counts), size=(draws, len(counts)))
    shares = agree[picks].sum(axis=1) / np.maximum(pairs[picks].sum(axis=1), 1)
    tail = (1 - level) / 2
    return float(np.quantile(shares, tail)), float(np.quantile(shares, 1 - tail))
