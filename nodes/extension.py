"""The one place where our nodes are registered with ComfyUI."""

from __future__ import annotations

from comfy_api.v0_0_2 import ComfyExtension, io

from .proposals import ProposalSampler


class ProtagonistExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [ProposalSampler]
