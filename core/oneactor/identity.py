"""A OneActor identity on disk: projector, target offset, mean auxiliary offset, base word, model facts."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from ..checkpoint import atomic_save_tensors
from ..interface import DiffusionBackend, ProtagonistError
from .projector import Projector

FORMAT = "protagonist.oneactor.identity/1"


@dataclass
class OneActorIdentity:
    projector: Projector
    delta_target: torch.Tensor  # [width]
    delta_aux: torch.Tensor  # [width], mean over all auxiliary proposals
    base_word: str
    family: str
    feature_shape: tuple[int, int, int]

    @property
    def width(self) -> int:
        return int(self.delta_target.shape[-1])


@torch.no_grad()
def make_identity(projector: Projector, features: torch.Tensor, base_word: str, family: str) -> OneActorIdentity:
    """Offsets from the eval-mode projector: index 0 of `features` is the target, the rest auxiliaries."""
    projector.eval()
    device = next(projector.parameters()).device
    offsets = projector(features.to(device)).float().cpu()
    return OneActorIdentity(projector, offsets[0], offsets[1:].mean(dim=0), base_word, family,
                            tuple(features.shape[1:]))


def save_identity(identity: OneActorIdentity, path: str | Path) -> Path:
    tensors = {f"projector.{k}": v for k, v in identity.projector.state_dict().items()}
    tensors.update({"delta_target": identity.delta_target, "delta_aux": identity.delta_aux})
    metadata = {"format": FORMAT, "base_word": identity.base_word, "family": identity.family,
                "feature_shape": json.dumps(list(identity.feature_shape)), "width": str(identity.width)}
    atomic_save_tensors(tensors, Path(path), metadata)
    return Path(path)


def load_identity(path: str | Path, backend: DiffusionBackend | None = None) -> OneActorIdentity:
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    if metadata.get("format") != FORMAT:
        raise ProtagonistError(f"{path} is not a OneActor identity file (format {metadata.get('format')!r})")
    shape = tuple(json.loads(metadata["feature_shape"]))
    width = int(metadata["width"])
    if backend is not None:
        check_compatible(metadata["family"], width, backend, path)
    tensors = load_file(str(path))
    projector = Projector(*shape, width)
    projector.load_state_dict({k[10:]: v for k, v in tensors.items() if k.startswith("projector.")})
    return OneActorIdentity(projector.eval(), tensors["delta_target"], tensors["delta_aux"], metadata["base_word"],
                            metadata["family"], shape)


def check_compatible(family: str, width: int, backend: DiffusionBackend, source) -> None:
    model_width = backend.encode_prompts([""]).embeds.shape[-1]
    if family != backend.family or width != model_width:
        raise ProtagonistError(
            f"{source} was tuned on a {family} model with {width}-wide text embeddings; this model is "
            f"{backend.family} with {model_width}-wide embeddings: tune the identity on this model")


def check_continuable(identity: OneActorIdentity, features: torch.Tensor, base_word: str) -> None:
    """Refuse to continue tuning `identity` on proposals of another feature shape or for another base word."""
    shape = tuple(features.shape[1:])
    if tuple(identity.feature_shape) != shape:
        raise ProtagonistError(
            f"the identity to continue was tuned on features of shape {tuple(identity.feature_shape)}, these "
            f"proposals' features are {shape}: continue it on proposals of the same model and size, or leave "
            "continue_from unconnected")
    if identity.base_word != base_word:
        raise ProtagonistError(f"the identity to continue was tuned for the base word {identity.base_word!r}, not "
                               f"{base_word!r}: use the same base word, or leave continue_from unconnected")
