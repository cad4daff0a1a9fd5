"""Run-directory checkpoints: a resumed run continues exactly where the interrupted one stopped."""

from __future__ import annotations

import pytest
import torch

from protagonist.core.checkpoint import atomic_folder, load_checkpoint, save_checkpoint


def _train(model, optimizer, steps, start=0):
    for step in range(start, steps):
        x = torch.randn(8, 4, generator=torch.Generator().manual_seed(step))
        loss = (model(x) - x.sum(dim=1, keepdim=True)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def _fresh():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2)


def test_resume_equals_uninterrupted(tmp_path):
    model, optimizer = _fresh()
    _train(model, optimizer, 10)

    interrupted, opt = _fresh()
    _train(interrupted, opt, 4)
    save_checkpoint(tmp_path, 4, {"net": interrupted}, opt, extra={"note": "x"})
    resumed, opt2 = _fresh()
    state = load_checkpoint(tmp_path, {"net": resumed}, opt2)
    assert state["step"] == 4 and state["extra"] == {"note": "x"}
    _train(resumed, opt2, 10, start=state["step"])
    for a, b in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_only_the_latest_checkpoint_is_kept_and_nothing_means_none(tmp_path):
    model, optimizer = _fresh()
    assert load_checkpoint(tmp_path, {"net": model}) is None
    save_checkpoint(tmp_path, 1, {"net": model}, optimizer)
    save_checkpoint(tmp_path, 2, {"net": model}, optimizer)
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-0000002.safetensors"]


def test_tied_weights_are_saved_and_restored(tmp_path):
    shared = torch.nn.Embedding(5, 3)
    model = torch.nn.ModuleDict({"a": shared, "b": torch.nn.Linear(3, 5, bias=False)})
    model["b"].weight = shared.weight  # tied, as T5's embeddings are
    optimizer = torch.optim.AdamW(model.parameters())
    save_checkpoint(tmp_path, 1, {"net": model}, optimizer)
    fresh = torch.nn.ModuleDict({"a": torch.nn.Embedding(5, 3), "b": torch.nn.Linear(3, 5, bias=False)})
    load_checkpoint(tmp_path, {"net": fresh})
    assert torch.equal(fresh["a"].weight, shared.weight) and torch.equal(fresh["b"].weight, shared.weight)


def test_atomic_folder_replaces_only_on_success(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "weights.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_folder(folder) as tmp:
        (tmp / "weights.txt").write_text("half written")
        raise RuntimeError("crash while saving")
    assert (folder / "weights.txt").read_text() == "old"
    with atomic_folder(folder) as tmp:
        (tmp / "weights.txt").write_text("new")
    assert (folder / "weights.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
