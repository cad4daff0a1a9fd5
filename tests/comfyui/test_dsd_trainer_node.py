"""The Two-Frame Trainer node on ComfyUI's own tiny FLUX: trains, resumes, writes a file the sampler uses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from protagonist.core.images import save_png, to_pil
from protagonist.core.tiny_models import tiny_flux


@pytest.fixture(scope="module")
def flux_models(comfy_nodes):
    from . import tiny_comfy

    return tiny_comfy.comfy_flux_models(tiny_flux(0))


@pytest.fixture(scope="module")
def pair_dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pairs")
    g = torch.Generator().manual_seed(0)
    with open(folder / "pairs.jsonl", "w") as f:
        for k in range(3):
            colour = torch.rand(3, 1, 1, generator=g)
            for name in (f"r{k}.png", f"t{k}.png"):
                image = (colour + 0.1 * torch.rand(3, 32, 32, generator=g)).clamp(0, 1)
                save_png(to_pil(image), folder / name)
            f.write(json.dumps({"reference": f"r{k}.png", "target": f"t{k}.png", "prompt": "a blob at night"}) + "\n")
    return folder


def _train(comfy_nodes, flux_models, pairs, name, steps, overwrite=False):
    node = comfy_nodes.NODE_CLASS_MAPPINGS["Protagonist_TwoFrameTrainer"]
    model, clip, vae = flux_models
    return node.execute(model, clip, vae, str(pairs), name, steps, 2, 2, 2.0, 1e-2, 32, 1.0, 2, 0, overwrite).result


def _run_state(name: str) -> dict:
    import folder_paths

    path = Path(folder_paths.get_output_directory()) / "protagonist_runs" / name / "checkpoint.json"
    return json.loads(path.read_text())


def test_trainer_writes_a_file_that_loads_and_changes_the_sampler(comfy_nodes, flux_models, pair_dataset):
    import comfy.lora

    model, clip, vae = flux_models
    dsd, file, curve = _train(comfy_nodes, flux_models, pair_dataset, "tiny-dsd", 4)
    losses = _run_state("tiny-dsd")["extra"]["losses"]
    assert file == "tiny-dsd.safetensors" and curve.ndim == 4
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    assert dsd["c_embedder"]["weight"].abs().max() > 0  # moved off its zero init
    # Every LoRA tensor names a module ComfyUI's own LoRA loader maps for this FLUX.
    known = set(comfy.lora.model_lora_keys_unet(model.model, {}))
    bases = {k.rsplit(".lora_", 1)[0].removesuffix(".alpha") for k in dsd["lora"]}
    assert bases and bases <= known, sorted(bases - known)[:5]

    loaded = comfy_nodes.NODE_CLASS_MAPPINGS["Protagonist_LoadDSD"].execute(file).result[0]
    assert torch.equal(loaded["c_embedder"]["weight"], dsd["c_embedder"]["weight"])
    zero = {"c_embedder": {k: torch.zeros_like(v) for k, v in loaded["c_embedder"].items()}, "lora": {},
            "diff": {}, "added": {}}
    sampler = comfy_nodes.NODE_CLASS_MAPPINGS["Protagonist_TwoFrameDiTSampler"]
    positive = comfy_nodes.CLIPTextEncode().encode(clip, "a blob in the snow")[0]
    reference = torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(3))
    images = [sampler.execute(model, vae, weights, reference, positive, 5, 3, 1.0, 1.0, "euler", "simple", 32,
                              False).result[0] for weights in (loaded, zero)]
    assert (images[0] - images[1]).abs().max() > 1e-3

    with pytest.raises(ValueError, match="already exists"):  # never overwrites unless asked
        _train(comfy_nodes, flux_models, pair_dataset, "tiny-dsd", 4)


def test_an_interrupted_run_resumes(comfy_nodes, flux_models, pair_dataset):
    import comfy.model_management

    comfy.model_management.interrupt_current_processing(True)
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            _train(comfy_nodes, flux_models, pair_dataset, "tiny-resume", 3)
    finally:
        comfy.model_management.interrupt_current_processing(False)
    first = _run_state("tiny-resume")
    assert first["step"] == 1 and len(first["extra"]["losses"]) == 1  # the step done before the interrupt
    _train(comfy_nodes, flux_models, pair_dataset, "tiny-resume", 3)
    resumed = _run_state("tiny-resume")
    assert resumed["step"] == 3 and resumed["extra"]["losses"][:1] == first["extra"]["losses"]
    model = flux_models[0]
    assert not any("lora_" in n for n, _ in model.model.diffusion_model.named_parameters())  # adapter removed
