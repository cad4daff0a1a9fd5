"""Load an SDXL or FLUX model into a diffusers backend from a hub id, a local folder or one file."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from ..interface import DiffusionBackend, ProtagonistError

log = logging.getLogger(__name__)

PIPELINE_FAMILIES = {"StableDiffusionXLPipeline": "sdxl", "FluxPipeline": "flux"}


def detect_family(source: str) -> str:
    """The family of a diffusers folder (from model_index.json) or, failing that, of a name."""
    index = Path(source) / "model_index.json"
    if index.is_file():
        class_name = json.loads(index.read_text()).get("_class_name", "")
        if class_name in PIPELINE_FAMILIES:
            return PIPELINE_FAMILIES[class_name]
        raise ProtagonistError(f"{source} holds a {class_name!r}; supported: {sorted(PIPELINE_FAMILIES)}")
    return "flux" if "flux" in Path(source).name.lower() else "sdxl"


def pipeline_class(family: str):
    """The diffusers pipeline class of `family` ("sdxl" or "flux")."""
    from diffusers import FluxPipeline, StableDiffusionXLPipeline

    if family not in ("sdxl", "flux"):
        raise ProtagonistError(f"`family` must be 'sdxl' or 'flux', got {family!r}")
    return StableDiffusionXLPipeline if family == "sdxl" else FluxPipeline


def load_pipeline(source: str, family: str | None = None, dtype: torch.dtype = torch.float32,
                  config: str | None = None):
    """A diffusers pipeline from `source`: hub id, diffusers folder, or single checkpoint file.

    A single file needs `config` (a diffusers folder or hub id with the matching configs) when the
    machine is offline.
    """
    family = family or detect_family(source)
    cls = pipeline_class(family)
    path = Path(source)
    try:
        if path.is_file():
            kwargs = {"config": config} if config else {}
            return cls.from_single_file(str(path), torch_dtype=dtype, **kwargs), family
        return cls.from_pretrained(str(source), torch_dtype=dtype), family
    except (OSError, ValueError) as error:
        raise ProtagonistError(
            f"could not load the {family.upper()} model {source!r}: {error}. Pass a local diffusers folder "
            f"(with model_index.json), a single .safetensors checkpoint (with `config` for offline use), or a "
            f"hub id on a machine that can download it.") from error


def backend_from_components(family: str, parts: dict, **kwargs) -> DiffusionBackend:
    """A diffusers backend from pipeline-named components (a loaded pipeline's, or built by hand)."""
    from .flux import DiffusersFlux
    from .sdxl import DiffusersSDXL

    if family == "sdxl":
        return DiffusersSDXL.from_components(parts)
    return DiffusersFlux.from_components(parts, **kwargs)


def load_backend(source: str, family: str | None = None, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, config: str | None = None) -> DiffusionBackend:
    """A ready backend on `device`; see :func:`load_pipeline` for `source`."""
    pipe, family = load_pipeline(source, family, dtype, config)
    backend = backend_from_components(family, pipe.components)
    log.info("loaded %s model %s on %s (%s)", family, source, device, dtype)
    return backend.to(device=device)
