"""The benchmark's per-character pair counts, their resampled interval, and pooling runs of several seed sets."""

from __future__ import annotations

import json

import pytest

from protagonist.bench.pool import main as pool_main
from protagonist.bench.pool import pooled_table
from protagonist.bench.stats import bootstrap_interval, character_pairs, pooled_share

A, B, C = {"shape": "round"}, {"shape": "star"}, {"shape": "heart"}


def test_pairs_are_counted_per_character_and_unreadable_images_never_agree():
    counts = character_pairs([A, A, B, None, C, C], [0, 0, 0, 1, 1, 1])
    assert counts == [(1, 3), (1, 3)]
    assert character_pairs([None, None], [0, 0]) == [(0, 1)]
    assert pooled_share(counts) == pytest.approx(2 / 6)


def test_the_interval_holds_the_pooled_share_and_narrows_as_characters_grow():
    counts = [(10, 10)] * 14 + [(0, 10)] * 6 + [(5, 10)] * 4  # 24 characters, 66.7 %
    low, high = bootstrap_interval(counts)
    assert low < pooled_share(counts) < high
    low4, high4 = bootstrap_interval(counts * 4)
    assert (high4 - low4) == pytest.approx((high - low) / 2, rel=0.2)  # four times the characters: half as wide
    assert bootstrap_interval([(3, 10)] * 5) == pytest.approx((0.3, 0.3))
    assert bootstrap_interval(counts) == bootstrap_interval(list(counts))  # seeded: a rerun gives the same


def _write_run(folder, identities, character_pairs=None, conformity=1.0, validity=1.0):
    scores = {"identities": identities, "prompt_conformity": conformity, "validity": validity}
    if character_pairs is not None:
        scores["character_pairs"] = character_pairs
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps({"oneactor": {"scores": scores}}))
    return folder


def test_runs_pool_over_all_their_characters(tmp_path):
    new = _write_run(tmp_path / "new", [A] * 4, character_pairs=[[1, 1], [1, 1]], conformity=1.0, validity=1.0)
    old = _write_run(tmp_path / "old", [A, B, None, None], conformity=0.5, validity=0.5)  # counted again: 0 of 2
    table = pooled_table([new, old], "oneactor", [2, 2])
    pooled = table.splitlines()[-1].split(" | ")
    assert pooled[1:3] == ["4", "50.0%"]  # 2 agreeing pairs of 4
    assert pooled[4:] == ["75.0%", "75.0% |"]  # conformity and validity pooled over the 8 images


def test_pool_says_what_is_wrong_with_its_input(tmp_path):
    run = _write_run(tmp_path / "run", [A] * 3)
    with pytest.raises(SystemExit, match="the run has 3 images, the prompt file"):
        pooled_table([run], "oneactor", [2, 2])
    with pytest.raises(SystemExit, match=r"has no 'plain' run; it has \['oneactor'\]"):
        pool_main([str(run), "--method", "plain"])
    with pytest.raises(SystemExit, match="does not exist"):
        pool_main([str(tmp_path / "missing")])
