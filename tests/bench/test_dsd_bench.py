"""The DSD benchmark's held-out test set and scoring, on renders whose answers are known."""

from __future__ import annotations

import pytest
import torch

from protagonist.bench.dsd import DSDBench, agreement, held_out
from protagonist.sprites.oracle import Oracle
from protagonist.sprites.world import render


@pytest.fixture(scope="module")
def oracle():
    return Oracle.load()


def test_held_out_identities_avoid_the_pair_dataset_and_ask_for_new_contexts():
    bench = DSDBench(references=6, contexts=3)
    seen = set(range(0, 1152, 2))
    test = held_out(seen, bench)
    assert len(test.identities) == 6 and all(i.index % 2 == 1 for i in test.identities)
    assert test.references.shape == (6, 3, 32, 32)
    assert all(len(p) == 3 and len(set(p)) == 3 for p in test.prompts)


def test_agreement_of_exact_renders_is_full_and_of_other_identities_empty(oracle):
    test = held_out(set(), DSDBench(references=4, contexts=2))
    targets = [i for i in test.identities for _ in range(2)]
    contexts = [c for row in test.contexts for c in row]
    images = [render(i, c, k) for k, (i, c) in enumerate(zip(targets, contexts))]
    scores = agreement(torch.stack(images), targets, contexts, oracle)
    assert scores["identity_agreement"] == 1.0 and scores["prompt_conformity"] == 1.0
    shifted = targets[2:] + targets[:2]
    assert agreement(torch.stack(images), shifted, contexts, oracle)["identity_agreement"] == 0.0
