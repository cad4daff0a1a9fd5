"""Two-frame training on a tiny pair dataset: the c_embedder learns, checkpoints resume."""

from __future__ import annotations

import json

import pytest
import torch

from protagonist.core.dsd.training import TwoFrameTraining, read_pairs, train_two_frame
from protagonist.core.images import save_png, to_pil
from protagonist.core.interface import ProtagonistError


@pytest.fixture
def pair_folder(tmp_path):
    g = torch.Generator().manual_seed(0)
    with open(tmp_path / "pairs.jsonl", "w") as f:
        for k in range(3):
            for name in (f"r{k}.png", f"t{k}.png"):
                save_png(to_pil(torch.rand(3, 32, 32, generator=g)), tmp_path / name)
            f.write(json.dumps({"reference": f"r{k}.png", "target": f"t{k}.png", "prompt": "a blob at night"}) + "\n")
    return tmp_path


def test_training_moves_the_c_embedder_and_resumes(tiny_flux_backend, pair_folder, tmp_path):
    settings = TwoFrameTraining(steps=3, batch_size=2, rank=2, alpha=2, lr=1e-2, side=32, checkpoint_every=2)
    c_embedder, lora, losses = train_two_frame(tiny_flux_backend, pair_folder, tmp_path / "run", settings)
    assert len(losses) == 3 and c_embedder.weight.abs().sum() > 0 and lora
    assert not any("lora" in n for n, _ in tiny_flux_backend.transformer.named_parameters())
    state = json.loads((tmp_path / "run" / "checkpoint.json").read_text())
    assert state["step"] == 3
    more = TwoFrameTraining(**{**settings.__dict__, "steps": 4})
    _, _, resumed = train_two_frame(tiny_flux_backend, pair_folder, tmp_path / "run", more)
    assert resumed[:3] == losses and len(resumed) == 4


def test_missing_or_empty_pairs_say_what_to_do(tmp_path):
    with pytest.raises(ProtagonistError, match="make-pairs"):
        read_pairs(tmp_path)
    (tmp_path / "pairs.jsonl").write_text("")
    with pytest.raises(ProtagonistError, match="empty"):
        read_pairs(tmp_path)


def test_a_trained_model_generates_new_frames(tiny_flux_backend, pair_folder, tmp_path):
    from protagonist.core.dsd.generate import generate_two_frame
    from protagonist.core.dsd.guidance import TrueCFG

    settings = TwoFrameTraining(steps=1, batch_size=1, rank=2, alpha=2, side=32)
    c_embedder, lora, _ = train_two_frame(tiny_flux_backend, pair_folder, tmp_path / "run", settings)
    frames = generate_two_frame(tiny_flux_backend, c_embedder, lora, 2, 2.0, torch.rand(2, 3, 40, 40),
                                ["a blob at night", "a blob in the snow"], [1, 2], 32, 2, TrueCFG(1.5, 2.0))
    assert frames.shape == (2, 3, 32, 32)
