"""Our model folders in ComfyUI (`models/dinov2`, `models/protagonist`) and where outputs are written."""

from __future__ import annotations

import os
from pathlib import Path

import folder_paths

from ..core.interface import ProtagonistError

DINOV2_FOLDER, PROTAGONIST_FOLDER, VLM_FOLDER = "dinov2", "protagonist", "vlm"


def register_folders() -> None:
    """Add our folders without touching any other entry (user paths from extra_model_paths stay first)."""
    for name in (DINOV2_FOLDER, PROTAGONIST_FOLDER, VLM_FOLDER):
        folder_paths.add_model_folder_path(name, os.path.join(folder_paths.models_dir, name))
    extensions = folder_paths.folder_names_and_paths[PROTAGONIST_FOLDER][1]
    extensions.add(".safetensors")


def dinov2_source(name: str) -> str:
    """A folder name under models/dinov2, or else the text as given (a path or a hub id)."""
    return model_source(name, DINOV2_FOLDER)


def model_source(name: str, folder: str) -> str:
    """A model folder (with config.json) named `name` under one of `folder`'s paths, or else `name` as given."""
    for root in folder_paths.get_folder_paths(folder):
        candidate = Path(root) / name
        if (candidate / "config.json").exists():
            return str(candidate)
    return name


def output_file(folder: str, filename: str, overwrite: bool = False) -> Path:
    """A path in the first folder registered for `folder` (loras, embeddings, protagonist)."""
    path = Path(folder_paths.get_folder_paths(folder)[0]) / filename
    if path.exists() and not overwrite:
        raise ProtagonistError(f"{path} already exists; choose another name (nothing was overwritten)")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def run_directory(name: str) -> Path:
    """A resumable run directory under ComfyUI's output folder."""
    return Path(folder_paths.get_output_directory()) / "protagonist_runs" / name
