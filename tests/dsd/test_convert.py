"""The DSD converter round trip on tiny FLUX transformers."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from protagonist.core.dsd.convert import convert_dsd, diffusers_lora, load_converted, peft_lora, save_trained
from protagonist.core.interface import ProtagonistError


def test_round_trip_keeps_only_what_the_base_lacks(tmp_path):
    base = {"x_embedder.weight": torch.randn(8, 4), "blocks.0.w": torch.randn(3, 3), "blocks.1.w": torch.randn(2)}
    dsd = {k: v.clone() for k, v in base.items()}
    dsd["blocks.1.w"] += 0.5
    dsd["c_embedder.weight"], dsd["c_embedder.bias"] = torch.zeros(8, 4), torch.zeros(8)
    dsd["extra_head.weight"] = torch.ones(2)
    save_file(base, str(tmp_path / "base.safetensors"))
    (tmp_path / "dsd").mkdir()
    save_file(dsd, str(tmp_path / "dsd" / "model.safetensors"))
    save_file({"transformer.blocks.0.lora_A.weight": torch.ones(2, 3)}, str(tmp_path / "lora.safetensors"))
    counts = convert_dsd(tmp_path / "dsd", tmp_path / "base.safetensors", tmp_path / "small.safetensors",
                         lora=tmp_path / "lora.safetensors")
    assert counts == {"added": 3, "changed": 1, "lora": 1}
    parts = load_converted(tmp_path / "small.safetensors")
    assert set(parts["c_embedder"]) == {"weight", "bias"}  # a state dict for the Linear
    assert torch.allclose(base["blocks.1.w"] + parts["diff"]["blocks.1.w"], dsd["blocks.1.w"])
    assert set(parts["lora"]) == {"transformer.blocks.0.lora_A.weight"}
    assert set(parts["added"]) == {"extra_head.weight"}


def test_wrong_inputs_are_named(tmp_path):
    save_file({"a": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ProtagonistError, match="no c_embedder"):
        convert_dsd(tmp_path / "plain.safetensors", tmp_path / "plain.safetensors", tmp_path / "o.safetensors")
    with pytest.raises(ProtagonistError, match="not a converted DSD file"):
        load_converted(tmp_path / "plain.safetensors")


def test_trained_files_hold_lora_keys_that_comfyui_and_the_core_read(tmp_path):
    state = {"transformer_blocks.0.attn.to_q.lora_A.weight": torch.ones(2, 8),
             "transformer_blocks.0.attn.to_q.lora_B.weight": torch.zeros(8, 2)}
    path = save_trained(tmp_path / "trained.safetensors", torch.nn.Linear(4, 8), diffusers_lora(state, 2.0),
                        {"rank": "2"})
    parts = load_converted(path)
    assert set(parts["c_embedder"]) == {"weight", "bias"}
    # `transformer.<diffusers module>` is a FLUX LoRA prefix ComfyUI's loader maps; the alpha sits beside it.
    assert set(parts["lora"]) == {"transformer.transformer_blocks.0.attn.to_q.lora_A.weight",
                                  "transformer.transformer_blocks.0.attn.to_q.lora_B.weight",
                                  "transformer.transformer_blocks.0.attn.to_q.alpha"}
    peft, alpha = peft_lora(parts["lora"])
    assert set(peft) == set(state) and alpha == 2.0
    with pytest.raises(ProtagonistError, match="use it in ComfyUI"):
        peft_lora({"diffusion_model.double_blocks.0.img_attn.qkv.lora_up.weight": torch.zeros(3, 2)})
