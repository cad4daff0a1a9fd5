"""Integration tier: runs only when COMFYUI_PATH points at a ComfyUI checkout.

Run it with the Python of ComfyUI's own virtual environment (see the README), for example
``COMFYUI_PATH=~/ComfyUI ~/ComfyUI/.venv/bin/python -m pytest tests/comfyui``.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

PACK_ROOT = Path(__file__).resolve().parents[2]
COMFYUI_PATH = os.environ.get("COMFYUI_PATH")


def pytest_collection_modifyitems(config, items):
    if COMFYUI_PATH:
        return
    skip = pytest.mark.skip(reason="set COMFYUI_PATH to a ComfyUI checkout to run the ComfyUI integration tests")
    for item in items:
        if Path(str(item.fspath)).is_relative_to(Path(__file__).parent):
            item.add_marker(skip)


def _import_comfyui(path: str):
    """Import ComfyUI's modules as its own main.py would, on the CPU."""
    if path not in sys.path:
        sys.path.insert(0, path)
    import comfy.options

    comfy.options.enable_args_parsing()
    saved_argv = sys.argv
    sys.argv = ["main.py", "--cpu", "--disable-all-custom-nodes", "--preview-method", "none"]
    try:
        import comfy.cli_args  # noqa: F401  (parses the arguments above once)
        import comfy.model_management  # noqa: F401
        # As main.py does: ComfyUI's `utils` package first, before nodes.py puts comfy/ (with its utils.py)
        # first on sys.path; otherwise comfy_extras/nodes_images.py (ImageStitch…) fails to import.
        import utils.install_util  # noqa: F401
    finally:
        sys.argv = saved_argv
    import nodes

    return nodes


@pytest.fixture(scope="session")
def comfy_nodes(tmp_path_factory):
    """ComfyUI's `nodes` module with its built-in extra nodes and this pack loaded from its folder.

    ComfyUI's model and output folders point into a temporary directory for the session.
    """
    nodes = _import_comfyui(COMFYUI_PATH)
    import folder_paths

    root = tmp_path_factory.mktemp("comfyui")
    for name in ("loras", "embeddings", "dinov2", "protagonist"):
        (root / name).mkdir()
        extensions = folder_paths.folder_names_and_paths.get(name, ([], {".safetensors"}))[1]
        folder_paths.folder_names_and_paths[name] = ([str(root / name)], extensions)
    folder_paths.set_output_directory(str(root / "output"))
    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    loaded = asyncio.run(nodes.load_custom_node(str(PACK_ROOT)))
    assert loaded, "ComfyUI failed to load the pack (see the log above)"
    return nodes


@pytest.fixture(scope="session")
def diffusers_sdxl():
    from protagonist.core.tiny_models import tiny_sdxl

    backend = tiny_sdxl(0)
    for module in backend.modules().values():
        module.eval()
    return backend


@pytest.fixture(scope="session")
def comfy_sdxl(comfy_nodes, diffusers_sdxl):
    from . import tiny_comfy

    b = diffusers_sdxl
    model = tiny_comfy.comfy_sdxl_model(b.unet)
    import folder_paths

    clip = tiny_comfy.comfy_sdxl_clip(b.text_encoders["clip_l"], b.text_encoders["clip_g"],
                                      b.tokenizers["clip_l"], b.tokenizers["clip_g"],
                                      embedding_directory=folder_paths.get_folder_paths("embeddings")[0])
    return model, clip, tiny_comfy.comfy_vae(b.vae)


@pytest.fixture(scope="session")
def comfy_backend(comfy_sdxl):
    model, clip, vae = comfy_sdxl
    from .helpers import pack_module

    return pack_module("nodes.comfy_backend").ComfyBackend(model, clip, vae)


