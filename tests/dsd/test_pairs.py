"""The pair-mining pipeline on the tiny FLUX: written dataset, resume, and the empty-result error."""

from __future__ import annotations

import json

import pytest

from protagonist.core.dsd.pairs import GridPrompt, PairMining, grid_prompts, mine_pairs
from protagonist.core.interface import ProtagonistError
from protagonist.core.proposals import ProposalSettings


def _settings(threshold):
    return PairMining(threshold=threshold, sampling=ProposalSettings(count=1, steps=2, cfg=2.0, height=64, width=64))


def _embed(panels):
    return panels.mean(dim=(2, 3))  # colour means: enough to compare panels


def test_grid_prompts_are_seeded_and_name_their_panels():
    prompts = grid_prompts(["blob", "cat"], ["at night", "on a beach", "in the snow", "in a city"], 3, seed=1)
    assert prompts == grid_prompts(["blob", "cat"], ["at night", "on a beach", "in the snow", "in a city"], 3, seed=1)
    assert len(set(prompts[0].panels)) == 4
    assert GridPrompt("blob", ["at night", "x", "y", "z"]).text(2, 2).startswith("a 2x2 grid of the same blob: at night;")
    with pytest.raises(ProtagonistError, match="3 scenes cannot fill 4"):
        grid_prompts(["blob"], ["a", "b", "c"], 1)


def test_mining_writes_pairs_and_resumes(tiny_flux_backend, tmp_path):
    prompts = grid_prompts(["blob"], ["at night", "on a beach", "in the snow", "in a city"], 2, seed=0)
    seen = []
    summary = mine_pairs(tiny_flux_backend, prompts[:1], tmp_path, _embed, _settings(-1.0))
    assert summary == {"grids": 1, "pairs": 12, "kept": 12, "rejected": 0}
    summary = mine_pairs(tiny_flux_backend, prompts, tmp_path, _embed, _settings(-1.0),
                         callback=lambda index, grid: seen.append(index))
    assert seen == [1] and summary["grids"] == 2 and summary["kept"] == 24
    line = json.loads((tmp_path / "pairs.jsonl").read_text().splitlines()[0])
    assert (tmp_path / line["reference"]).exists() and line["prompt"].startswith("a blob ")


def test_everything_rejected_says_how_many_and_at_which_threshold(tiny_flux_backend, tmp_path):
    prompts = grid_prompts(["blob"], ["at night", "on a beach", "in the snow", "in a city"], 1, seed=0)
    with pytest.raises(ProtagonistError, match="threshold 1.5: all 12 pairs of 1 grids were rejected"):
        mine_pairs(tiny_flux_backend, prompts, tmp_path, _embed, _settings(1.5))


def test_a_grid_interrupted_after_some_pairs_is_redone_without_duplicates(tiny_flux_backend, tmp_path):
    prompts = grid_prompts(["blob"], ["at night", "on a beach", "in the snow", "in a city"], 2, seed=0)
    mine_pairs(tiny_flux_backend, prompts[:1], tmp_path, _embed, _settings(-1.0))
    written = (tmp_path / "pairs.jsonl").read_text().splitlines()
    unfinished = json.dumps({**json.loads(written[0]), "grid": 1})  # grid 1 crashed after one pair
    (tmp_path / "pairs.jsonl").write_text("\n".join([*written, unfinished]) + "\n")
    summary = mine_pairs(tiny_flux_backend, prompts, tmp_path, _embed, _settings(-1.0))
    lines = [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert summary["kept"] == 24 and len(lines) == 24
    assert len({(p["grid"], p["reference"], p["target"]) for p in lines}) == 24
