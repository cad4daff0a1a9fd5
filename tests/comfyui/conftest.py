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
    finally:
        sys.argv = saved_argv
    import nodes

    return nodes


@pytest.fixture(scope="session")
def comfy_nodes():
    """ComfyUI's `nodes` module with its built-in extra nodes and this pack loaded from its folder."""
    nodes = _import_comfyui(COMFYUI_PATH)
    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    loaded = asyncio.run(nodes.load_custom_node(str(PACK_ROOT)))
    assert loaded, "ComfyUI failed to load the pack (see the log above)"
    return nodes
