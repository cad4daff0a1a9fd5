"""A learned identity on disk: our own file, plus the formats stock ComfyUI loads (LoRA, embedding)."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import load_file

from ..adapters import kohya_lora
from ..checkpoint import atomic_save_tensors
from ..interface import ProtagonistError, TokenEmbedding
from .training import LearnedIdentity

FORMAT = "protagonist.chosen_one.identity/1"


def save_identity(identity: LearnedIdentity, path: str | Path, family: str, init_word: str) -> Path:
    tensors = {f"token.{k}": v for k, v in identity.token.vectors.items()}
    tensors.update({f"lora.{k}": v for k, v in identity.lora.items()})
    metadata = {"format": FORMAT, "family": family, "token": identity.token.name, "init_word": init_word,
                "rank": str(identity.rank), "alpha": str(identity.alpha), "losses": json.dumps(identity.losses)}
    atomic_save_tensors(tensors, Path(path), metadata)
    return Path(path)


def load_identity(path: str | Path, family: str | None = None) -> LearnedIdentity:
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    if metadata.get("format") != FORMAT:
        raise ProtagonistError(f"{path} is not a Chosen One identity file (format {metadata.get('format')!r})")
    if family is not None and metadata["family"] != family:
        raise ProtagonistError(f"{path} was trained on a {metadata['family']} model, not {family}")
    tensors = load_file(str(path))
    token = TokenEmbedding(metadata["token"], {k[6:]: v for k, v in tensors.items() if k.startswith("token.")})
    lora = {k[5:]: v for k, v in tensors.items() if k.startswith("lora.")}
    return LearnedIdentity(token, lora, int(metadata["rank"]), float(metadata["alpha"]),
                           json.loads(metadata.get("losses", "[]")))


def export_for_comfyui(identity: LearnedIdentity, lora_path: Path, embedding_path: Path,
                       lora_keys=kohya_lora, overwrite: bool = False) -> tuple[Path, Path]:
    """The LoRA in a key format ComfyUI's LoraLoader reads, and the token as an `embedding:` file.

    Existing files are never overwritten unless `overwrite` is set.
    """
    for path in (lora_path, embedding_path):
        if Path(path).exists() and not overwrite:
            raise ProtagonistError(f"{path} already exists; choose another name (nothing was overwritten)")
    atomic_save_tensors(lora_keys(identity.lora, identity.alpha), Path(lora_path),
                        {"ss_network_dim": str(identity.rank), "ss_network_alpha": str(identity.alpha)})
    atomic_save_tensors({k: v.float() for k, v in identity.token.vectors.items()}, Path(embedding_path))
    return Path(lora_path), Path(embedding_path)
