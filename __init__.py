"""ComfyUI-Protagonist: the same character across many images.

Inside ComfyUI this folder is a custom node pack (V3 API: `comfy_entrypoint`). Installed with
`pip install -e .` it is the standalone package `protagonist`. Nothing here imports ComfyUI until
ComfyUI itself asks for the nodes.
"""

__version__ = "0.1.0"


async def comfy_entrypoint():
    """Called by ComfyUI's loader; returns the extension that lists our nodes."""
    from .nodes.extension import ProtagonistExtension

    return ProtagonistExtension()
