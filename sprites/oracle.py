"""Attribute oracle: a small CNN that reads every identity and context attribute of a sprite.

Used to score generated images: which identity does a generated blob have, is it the
same across images, and does its context follow the prompt.  Weights are stored as
safetensors (no pickle) next to this file in ``weights/oracle.safetensors``.

    oracle = Oracle.load()
    reading = oracle.read(images)                  # images: [B, 3, 32, 32] in [0, 1]
    reading.labels["color"], reading.valid         # LongTensor [B], BoolTensor [B]
    identity_of(reading)                           # list[Identity | None]
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .attributes import (
    ATTRIBUTE_NAMES,
    ATTRIBUTES,
    CONTEXT_ATTRIBUTES,
    IDENTITY_ATTRIBUTES,
    RENDER_VERSION,
    Context,
    Identity,
    attribute_table_hash,
)
from .world import SIZE, split_grid

logger = logging.getLogger(__name__)

DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "weights" / "oracle.safetensors"
WEIGHTS_FORMAT = "protagonist-sprite-oracle"

#: Default confidence threshold of :attr:`OracleReading.valid`, see :meth:`Oracle.read`.
DEFAULT_THRESHOLD = 0.5

ARCH = {"channels": [32, 64, 96], "hidden": 128}


def _block(c_in: int, c_out: int, n_convs: int) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for k in range(n_convs):
        layers += [nn.Conv2d(c_in if k == 0 else c_out, c_out, 3, padding=1, bias=False),
                   nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
    return layers + [nn.MaxPool2d(2)]


class OracleNet(nn.Module):
    """Conv trunk 32->16->8->4 (spatial layout kept: position is a head too), shared MLP, one head per attribute."""

    def __init__(self, channels: list[int] | None = None, hidden: int | None = None) -> None:
        super().__init__()
        channels = list(channels or ARCH["channels"])
        hidden = int(hidden or ARCH["hidden"])
        c1, c2, c3 = channels
        self.trunk = nn.Sequential(*_block(3, c1, 2), *_block(c1, c2, 2), *_block(c2, c3, 1))
        self.mlp = nn.Sequential(nn.Flatten(), nn.Linear(c3 * 4 * 4, hidden), nn.ReLU(inplace=True))
        self.heads = nn.ModuleDict({a: nn.Linear(hidden, len(ATTRIBUTES[a])) for a in ATTRIBUTE_NAMES})

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """images [B, 3, 32, 32] in [0, 1] -> logits per attribute."""
        h = self.mlp(self.trunk(images * 2.0 - 1.0))
        return {a: head(h) for a, head in self.heads.items()}


@dataclass
class OracleReading:
    """What the oracle read from B images.

    labels / confidences / probs are keyed by attribute name (:data:`ATTRIBUTE_NAMES`);
    labels are value codes (index into ``ATTRIBUTES[attr]``), confidences the softmax
    probability of that label.  ``valid[i]`` is True when every attribute of image i was
    read with confidence above ``threshold``.
    """

    labels: dict[str, torch.Tensor]
    confidences: dict[str, torch.Tensor]
    probs: dict[str, torch.Tensor]
    valid: torch.Tensor
    threshold: float

    def __len__(self) -> int:
        return int(self.valid.shape[0])

    def confident(self, attrs=ATTRIBUTE_NAMES) -> torch.Tensor:
        """BoolTensor [B]: all of ``attrs`` read with confidence above the threshold."""
        mask = torch.ones(len(self), dtype=torch.bool)
        for a in attrs:
            mask &= self.confidences[a] > self.threshold
        return mask

    def names(self, i: int) -> dict[str, str]:
        """Value names read from image ``i``."""
        return {a: ATTRIBUTES[a][int(self.labels[a][i])] for a in ATTRIBUTE_NAMES}

    def as_tensor(self) -> torch.Tensor:
        """LongTensor [B, 7] of value codes in :data:`ATTRIBUTE_NAMES` order."""
        return torch.stack([self.labels[a] for a in ATTRIBUTE_NAMES], dim=1)


def identity_of(reading: OracleReading) -> list[Identity | None]:
    """Identity read from each image; None where an identity attribute is below the threshold."""
    ok = reading.confident(IDENTITY_ATTRIBUTES)
    return [Identity(**{a: int(reading.labels[a][i]) for a in IDENTITY_ATTRIBUTES}) if ok[i] else None
            for i in range(len(reading))]


def context_of(reading: OracleReading) -> list[Context | None]:
    """Context read from each image; None where a context attribute is below the threshold."""
    ok = reading.confident(CONTEXT_ATTRIBUTES)
    return [Context(**{a: int(reading.labels[a][i]) for a in CONTEXT_ATTRIBUTES}) if ok[i] else None
            for i in range(len(reading))]


def weights_metadata(extra: dict | None = None) -> dict[str, str]:
    meta = {
        "format": WEIGHTS_FORMAT,
        "attribute_hash": attribute_table_hash(),
        "render_version": str(RENDER_VERSION),
        "attributes": json.dumps({a: list(ATTRIBUTES[a]) for a in ATTRIBUTE_NAMES}),
        "arch": json.dumps(ARCH),
    }
    meta.update({k: str(v) for k, v in (extra or {}).items()})
    return meta


def save_weights(net: OracleNet, path: str | os.PathLike, extra_metadata: dict | None = None) -> Path:
    """Write ``net`` as safetensors atomically (temp file in the same folder, then ``os.replace``)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, str(tmp), metadata=weights_metadata(extra_metadata))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    logger.info("saved oracle weights to %s (%d bytes)", path, path.stat().st_size)
    return path


class Oracle:
    """Loaded oracle network plus reading helpers (inference only, CPU by default)."""

    def __init__(self, net: OracleNet, threshold: float = DEFAULT_THRESHOLD, metadata: dict | None = None):
        self.net = net.eval()
        self.threshold = float(threshold)
        self.metadata = dict(metadata or {})

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, device: str | torch.device = "cpu",
             threshold: float = DEFAULT_THRESHOLD) -> Oracle:
        """Load safetensors weights (default: the shipped ``weights/oracle.safetensors``).

        Raises ValueError if the file was trained on different attribute tables or renderer.
        """
        from safetensors import safe_open
        from safetensors.torch import load_file

        path = Path(path) if path is not None else DEFAULT_WEIGHTS
        if not path.is_file():
            raise FileNotFoundError(f"no oracle weights at {path}; run python -m protagonist.sprites.train_oracle")
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") != WEIGHTS_FORMAT:
            raise ValueError(f"{path} is not a sprite oracle (format={meta.get('format')!r})")
        if meta.get("attribute_hash") != attribute_table_hash():
            raise ValueError(f"{path} was trained for attribute tables {meta.get('attribute_hash')}, "
                             f"this world has {attribute_table_hash()}; retrain the oracle")
        arch = json.loads(meta.get("arch", json.dumps(ARCH)))
        net = OracleNet(arch["channels"], arch["hidden"])
        net.load_state_dict(load_file(str(path)))
        return cls(net.to(device), threshold, meta)

    @torch.inference_mode()
    def read(self, images: torch.Tensor, batch_size: int = 512) -> OracleReading:
        """Read images [B, 3, 32, 32] (or one [3, 32, 32]) with values in [0, 1].

        ``valid`` uses ``self.threshold`` (default 0.5) on every attribute's softmax
        confidence.  0.5 is the smallest threshold at which the read label holds a strict
        majority of the probability mass, i.e. the oracle prefers it over all alternatives
        *combined*.  Clean renders read at ~1.0, so the threshold only rejects images that
        are ambiguous between values (smeared, blended or off-world generations) while
        keeping slightly imperfect but recognisable ones; raise it for a stricter benchmark.
        """
        if images.dim() == 3:
            images = images.unsqueeze(0)
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, SIZE, SIZE):
            raise ValueError(f"expected [B, 3, {SIZE}, {SIZE}] images, got {tuple(images.shape)}; "
                             "use read_grid for 2x2 grids")
        images = images.float().clamp(0.0, 1.0)
        chunks = [self.net(images[i:i + batch_size].to(self.device)) for i in range(0, len(images), batch_size)]
        probs = {a: torch.cat([c[a] for c in chunks]).softmax(-1).cpu() if chunks
                 else torch.zeros(0, len(ATTRIBUTES[a])) for a in ATTRIBUTE_NAMES}
        confidences, labels = {}, {}
        for a, p in probs.items():
            confidences[a], labels[a] = p.max(-1) if len(p) else (torch.zeros(0), torch.zeros(0, dtype=torch.long))
        valid = torch.ones(len(images), dtype=torch.bool)
        for a in ATTRIBUTE_NAMES:
            valid &= confidences[a] > self.threshold
        return OracleReading(labels, confidences, probs, valid, self.threshold)

    def read_grid(self, grids: torch.Tensor, batch_size: int = 512) -> OracleReading:
        """Read 2x2 grids [B, 3, 64, 64]: a reading of B*4 panels, grid-major, panels row-major."""
        panels = split_grid(grids if grids.dim() == 4 else grids.unsqueeze(0))
        return self.read(panels.reshape(-1, 3, SIZE, SIZE), batch_size)
