"""Extract from the released DSD weights only what FLUX.1-dev lacks: c_embedder, LoRA, any changed tensor.

The released DSD transformer is a full 24 GB FLUX copy; users already have FLUX.1-dev. The converter
streams both, tensor by tensor, and writes one small safetensors file with `c_embedder.*`,
`lora.*` (from the released LoRA file, if given), `diff.*` (DSD − FLUX for tensors that differ) and
`added.*` (any other tensor FLUX.1-dev lacks).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open

from ..checkpoint import atomic_save_tensors
from ..interface import ProtagonistError

FORMAT = "protagonist.dsd.converted/1"


def _tensor_files(source: str | Path) -> list[Path]:
    source = Path(source)
    files = [source] if source.is_file() else sorted(source.glob("*.safetensors"))
    if not files:
        raise ProtagonistError(f"no .safetensors files at {source}: point at the DSD transformer folder or file")
    return files


def _index(files: list[Path]) -> dict[str, Path]:
    index = {}
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            index.update({key: path for key in f.keys()})
    return index


def _read(path: Path, key: str) -> torch.Tensor:
    with safe_open(str(path), framework="pt") as f:
        return f.get_tensor(key)


def convert_dsd(dsd_transformer: str | Path, base_transformer: str | Path, out: str | Path,
                lora: str | Path | None = None, tolerance: float = 0.0) -> dict:
    """Write the small file; returns counts of what it holds."""
    dsd, base = _index(_tensor_files(dsd_transformer)), _index(_tensor_files(base_transformer))
    extra = sorted(set(dsd) - set(base))
    if not any(k.startswith("c_embedder.") for k in extra):
        raise ProtagonistError(f"{dsd_transformer} has no c_embedder: it is not a DSD transformer")
    # c_embedder.* keeps its name; any other tensor FLUX.1-dev lacks goes under "added."
    tensors = {(k if k.startswith("c_embedder.") else f"added.{k}"): _read(dsd[k], k) for k in extra}
    changed = 0
    for key in sorted(set(dsd) & set(base)):
        ours, theirs = _read(dsd[key], key), _read(base[key], key)
        if ours.shape != theirs.shape:
            raise ProtagonistError(f"{key} is {tuple(ours.shape)} in DSD but {tuple(theirs.shape)} in the base: "
                                   f"the base is not FLUX.1-dev")
        difference = ours.float() - theirs.float()
        if difference.abs().max() > tolerance:
            tensors[f"diff.{key}"] = difference.to(ours.dtype)
            changed += 1
    if lora is not None:
        tensors.update({f"lora.{k}": v for path in _tensor_files(lora) for k, v in _load_all(path).items()})
    atomic_save_tensors(tensors, Path(out), {"format": FORMAT})
    return {"added": len(extra), "changed": changed, "lora": sum(k.startswith("lora.") for k in tensors)}


def save_trained(path: str | Path, c_embedder: torch.nn.Module, lora: dict[str, torch.Tensor],
                 metadata: dict[str, str] | None = None) -> Path:
    """Write a trained two-frame model in the converted format (atomically); the path.

    `lora` is already in the keys the target loader reads: ComfyUI's `diffusion_model.<module>.lora_up…`
    (:func:`~protagonist.core.adapters.comfy_lora`) for ComfyUI's FLUX, or diffusers' `transformer.<module>…`
    (:func:`diffusers_lora`) for a diffusers FLUX; ComfyUI's LoRA loader accepts both.
    """
    tensors = {f"c_embedder.{k}": v for k, v in c_embedder.state_dict().items()}
    tensors.update({f"lora.{k}": v for k, v in lora.items()})
    atomic_save_tensors(tensors, Path(path), {"format": FORMAT, **(metadata or {})})
    return Path(path)


def diffusers_lora(state: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """peft LoRA weights of a diffusers FLUX transformer → `transformer.<module>.lora_A/B.weight` + `.alpha`."""
    out = {f"transformer.{k}": v for k, v in state.items()}
    for key in state:
        out[f"transformer.{key.rpartition('.lora_')[0]}.alpha"] = torch.tensor(float(alpha))
    return out


def peft_lora(lora: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], float | None]:
    """A DSD file's LoRA as peft weights for a diffusers FLUX transformer, and its alpha if the file has one."""
    alphas = {float(v) for k, v in lora.items() if k.endswith(".alpha")}
    weights = {k: v for k, v in lora.items() if not k.endswith(".alpha")}
    if any(k.startswith("diffusion_model.") or ".lora_up." in k for k in weights):
        raise ProtagonistError("this DSD file's LoRA was trained on ComfyUI's FLUX module names; use it in ComfyUI "
                               "(Load DSD Weights → Two-Frame DiT Sampler)")
    peft = {k.removeprefix("transformer."): v for k, v in weights.items()}
    return peft, (alphas.pop() if len(alphas) == 1 else None)


def _load_all(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def load_converted(path: str | Path) -> dict[str, dict[str, torch.Tensor]]:
    """{"c_embedder": …, "lora": …, "diff": …} from a converted file (refuses any other file)."""
    with safe_open(str(path), framework="pt") as f:
        if (f.metadata() or {}).get("format") != FORMAT:
            raise ProtagonistError(f"{path} is not a converted DSD file; make one with `dsd convert`")
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    parts = {"c_embedder": {}, "lora": {}, "diff": {}, "added": {}}
    for key, value in tensors.items():
        head, _, rest = key.partition(".")
        if head not in parts:
            raise ProtagonistError(f"{path} holds an unexpected tensor {key!r}")
        parts[head][rest] = value
    return parts
