"""Helpers of the integration tier: the pack as ComfyUI imported it, a tiny-model node, headless runs."""

from __future__ import annotations

import asyncio
import sys

from .conftest import PACK_ROOT


def pack_module(name: str):
    """A module of the pack as ComfyUI imported it (ComfyUI names the package after its folder path)."""
    return sys.modules[str(PACK_ROOT).replace(".", "_x_") + "." + name]


def tiny_loader_node(comfy_sdxl):
    """A test-only node that hands the in-process tiny models to a prompt."""
    from comfy_api.v0_0_2 import io

    class TinyModels(io.ComfyNode):
        @classmethod
        def define_schema(cls):
            return io.Schema(node_id="ProtagonistTest_TinyModels", category="testing", inputs=[],
                             outputs=[io.Model.Output(), io.Clip.Output(), io.Vae.Output()])

        @classmethod
        def execute(cls):
            return io.NodeOutput(*comfy_sdxl)

    return TinyModels


def proposal_sampler_inputs(**changes) -> dict:
    """Inputs of a Proposal Sampler node on the tiny models of node "1" (see :func:`tiny_loader_node`)."""
    return {"model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "prompt": "a photo of a blob", "negative": "",
            "count": 3, "seed": 1, "steps": 2, "cfg": 4.0, "sampler": "euler", "width": 32, "height": 32,
            "batch_size": 3, **changes}


class StubServer:
    client_id = None
    last_node_id = None
    last_prompt_id = None
    sockets_metadata: dict = {}

    def __init__(self):
        self.messages = []

    def send_sync(self, event, data, sid=None):
        self.messages.append((event, data))


def run_prompt(prompt: dict) -> dict:
    """Validate and execute an API-format prompt with ComfyUI's own executor; the outputs by node id."""
    import execution

    valid = asyncio.run(execution.validate_prompt("test", prompt, None))
    assert valid[0], valid
    executor = execution.PromptExecutor(StubServer())
    asyncio.run(executor.execute_async(prompt, "test", {}, valid[2]))
    assert executor.success, executor.status_messages
    return executor.history_result["outputs"], executor


