"""The shipped sprite oracle: weights file format and held-out accuracy (no training here)."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
from protagonist.sprites.attributes import ATTRIBUTE_NAMES, attribute_table_hash
from protagonist.sprites.oracle import DEFAULT_WEIGHTS, Oracle, context_of, identity_of
from protagonist.sprites.train_oracle import augment, sample_batch
from protagonist.sprites.world import Context, Identity, render_grid

HELD_OUT_SEED = 20_240_917   # not a training seed (training uses 0, evaluation 1_000_003)


@pytest.fixture(scope="module")
def oracle() -> Oracle:
    torch.set_num_threads(2)
    return Oracle.load()


@pytest.fixture(scope="module")
def held_out():
    return sample_batch(500, np.random.default_rng(HELD_OUT_SEED))


def test_weights_file_is_small_safetensors_with_table_hash():
    raw = DEFAULT_WEIGHTS.read_bytes()
    assert len(raw) < 2_000_000
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + header_len])
    meta = header["__metadata__"]
    assert meta["format"] == "protagonist-sprite-oracle"
    assert meta["attribute_hash"] == attribute_table_hash()
    assert all(v["dtype"] in ("F32", "I64") for k, v in header.items() if k != "__metadata__")
    assert (DEFAULT_WEIGHTS.parent / "oracle_card.md").is_file()


def test_oracle_reads_held_out_renders(oracle, held_out):
    images, labels = held_out
    reading = oracle.read(images)
    for k, attr in enumerate(ATTRIBUTE_NAMES):
        acc = (reading.labels[attr] == labels[:, k]).float().mean().item()
        assert acc >= 0.98, f"{attr}: {acc:.3f}"
    assert reading.valid.float().mean().item() >= 0.98
    assert reading.as_tensor().shape == (500, 7)


def test_oracle_reads_mildly_corrupted_renders(oracle, held_out):
    images, labels = held_out
    reading = oracle.read(augment(images, torch.Generator().manual_seed(1)))
    for k, attr in enumerate(ATTRIBUTE_NAMES):
        acc = (reading.labels[attr] == labels[:, k]).float().mean().item()
        assert acc >= 0.95, f"{attr}: {acc:.3f}"


def test_identity_and_context_helpers(oracle, held_out):
    images, labels = held_out[0][:50], held_out[1][:50]
    reading = oracle.read(images)
    idents, ctxs = identity_of(reading), context_of(reading)
    truth_i = [Identity(*row[:5].tolist()) for row in labels]
    truth_c = [Context(*row[5:].tolist()) for row in labels]
    assert sum(i == t for i, t in zip(idents, truth_i)) >= 48
    assert sum(c == t for c, t in zip(ctxs, truth_c)) >= 48
    assert reading.names(0) == {**truth_i[0].names(), **truth_c[0].names()} or idents[0] != truth_i[0]
    strict = Oracle(oracle.net, threshold=1.01)
    strict_reading = strict.read(images[:4])
    assert not strict_reading.valid.any()
    assert identity_of(strict_reading) == [None] * 4 and context_of(strict_reading) == [None] * 4


def test_oracle_reads_grid_panels(oracle):
    rng = np.random.default_rng(HELD_OUT_SEED + 1)
    grids, truth = [], []
    for _ in range(25):
        ident = Identity.random(rng)
        ctxs = [Context.random(rng) for _ in range(4)]
        grids.append(render_grid(ident, ctxs, rng))
        truth += [ident.codes() + c.codes() for c in ctxs]
    reading = oracle.read_grid(torch.stack(grids))
    assert len(reading) == 100
    correct = (reading.as_tensor() == torch.tensor(truth)).all(1).float().mean().item()
    assert correct >= 0.95


def test_oracle_rejects_wrong_inputs_and_foreign_weights(oracle, tmp_path):
    with pytest.raises(ValueError):
        oracle.read(torch.rand(2, 3, 64, 64))
    assert len(oracle.read(torch.rand(3, 32, 32))) == 1
    from safetensors.torch import load_file, save_file

    bad = tmp_path / "bad.safetensors"
    meta = dict(oracle.metadata, attribute_hash="0000000000000000")
    save_file(load_file(str(DEFAULT_WEIGHTS)), str(bad), metadata=meta)
    with pytest.raises(ValueError, match="attribute tables"):
        Oracle.load(bad)
    with pytest.raises(FileNotFoundError):
        Oracle.load(tmp_path / "missing.safetensors")
