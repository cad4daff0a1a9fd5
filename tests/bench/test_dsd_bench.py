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


def test_render_pairs_show_one_character_in_two_scenes_and_prompt_the_target_scene(tmp_path, oracle):
    import json

    from PIL import Image

    from protagonist.bench.dsd import render_pairs
    from protagonist.core.images import pil_to_tensor
    from protagonist.sprites.captions import context_phrase
    from protagonist.sprites.oracle import context_of, identity_of

    summary = render_pairs(tmp_path, DSDBench(render_identities=3, pairs_per_identity=2))
    pairs = [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert summary["kept"] == len(pairs) == 6 and len(summary["seen_identities"]) == 3
    images = torch.stack([pil_to_tensor(Image.open(tmp_path / p[role]))
                          for p in pairs for role in ("reference", "target")])
    reading = oracle.read(images)
    identities, scenes = identity_of(reading), context_of(reading)
    assert all(identities[2 * k] == identities[2 * k + 1] is not None for k in range(6))
    assert {identities[2 * k].index for k in range(6)} == set(summary["seen_identities"])
    assert all(p["prompt"] == f"a blob {context_phrase(scenes[2 * k + 1])}" for k, p in enumerate(pairs))
    assert all(scenes[2 * k] != scenes[2 * k + 1] for k in range(6))


def test_reference_reliance_is_one_for_an_untrained_c_embedder_and_not_for_a_trained_one(tiny_flux_backend):
    from protagonist.bench.dsd import reference_reliance
    from protagonist.core.dsd.two_frame import new_c_embedder

    c_embedder = new_c_embedder(tiny_flux_backend.image_embedder())  # zero-initialised: the reference adds nothing
    ratios = reference_reliance(tiny_flux_backend, c_embedder, None, 4, sigmas=(0.9, 0.5), pairs=4)
    assert ratios == {0.9: 1.0, 0.5: 1.0}
    with torch.no_grad():
        torch.nn.init.normal_(c_embedder.weight, std=0.5, generator=torch.Generator().manual_seed(0))
    ratios = reference_reliance(tiny_flux_backend, c_embedder, None, 4, sigmas=(0.9, 0.5), pairs=4)
    assert all(abs(r - 1.0) > 1e-3 for r in ratios.values())
