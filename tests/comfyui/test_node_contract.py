"""What every node of the pack promises inside ComfyUI: prefixed ids, categories by method, a tooltip on
every input, our model folders added without overwriting anyone's, progress with a preview, interrupt."""

from __future__ import annotations

import os

import pytest
import torch

from .conftest import PACK_ROOT
from .helpers import pack_module

CATEGORY_OF_MODULE = {"proposals": "Protagonist/common", "chosen_one": "Protagonist/The Chosen One",
                      "chosen_one_training": "Protagonist/The Chosen One", "oneactor": "Protagonist/OneActor",
                      "oneactor_io": "Protagonist/OneActor", "dsd": "Protagonist/Diffusion Self-Distillation",
                      "dsd_sampler": "Protagonist/Diffusion Self-Distillation",
                      "dsd_training": "Protagonist/Diffusion Self-Distillation"}


def our_nodes(registry) -> dict:
    package = str(PACK_ROOT).replace(".", "_x_") + "."
    return {name: cls for name, cls in registry.items() if cls.__module__.startswith(package)}


def test_ids_are_prefixed_and_categories_group_nodes_by_method(comfy_nodes):
    nodes = our_nodes(comfy_nodes.NODE_CLASS_MAPPINGS)
    assert len(nodes) >= 14
    for name, cls in nodes.items():
        schema = cls.GET_SCHEMA()
        assert name.startswith("Protagonist_") and schema.node_id == name
        assert schema.display_name and schema.display_name.endswith("(Protagonist)"), name
        assert schema.description, name
        assert schema.category == CATEGORY_OF_MODULE[cls.__module__.rsplit(".", 1)[1]], (name, schema.category)


def test_every_input_has_a_tooltip(comfy_nodes):
    missing = []
    for name, cls in our_nodes(comfy_nodes.NODE_CLASS_MAPPINGS).items():
        spec = cls.INPUT_TYPES()
        for section in ("required", "optional"):
            for input_name, config in spec.get(section, {}).items():
                options = config[1] if len(config) > 1 else {}
                if not options.get("tooltip"):
                    missing.append(f"{name}.{input_name}")
    assert not missing


def test_model_folders_are_added_without_overwriting(comfy_nodes):
    import folder_paths

    register_folders = pack_module("nodes.model_folders").register_folders
    saved = {k: (list(v[0]), set(v[1])) for k, v in folder_paths.folder_names_and_paths.items()}
    try:
        folder_paths.folder_names_and_paths["dinov2"] = (["/user/dinov2"], {".bin"})
        folder_paths.folder_names_and_paths.pop("protagonist")
        register_folders()
        register_folders()  # idempotent
        dinov2, extensions = folder_paths.folder_names_and_paths["dinov2"]
        default = os.path.join(folder_paths.models_dir, "dinov2")
        assert dinov2 == ["/user/dinov2", default] and ".bin" in extensions
        assert folder_paths.folder_names_and_paths["protagonist"][0] == [
            os.path.join(folder_paths.models_dir, "protagonist")]
        assert ".safetensors" in folder_paths.folder_names_and_paths["protagonist"][1]
        others = {k: (list(v[0]), set(v[1])) for k, v in folder_paths.folder_names_and_paths.items()
                  if k not in ("dinov2", "protagonist")}
        assert others == {k: v for k, v in saved.items() if k not in ("dinov2", "protagonist")}
    finally:
        folder_paths.folder_names_and_paths.clear()
        folder_paths.folder_names_and_paths.update({k: (v[0], v[1]) for k, v in saved.items()})


@pytest.fixture
def progress_events():
    import comfy.utils
    from comfy.cli_args import LatentPreviewMethod, args

    events = []
    saved_hook, saved_method = comfy.utils.PROGRESS_BAR_HOOK, args.preview_method
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, **kw: events.append((value, total, preview)))
    args.preview_method = LatentPreviewMethod.Latent2RGB
    try:
        yield events
    finally:
        comfy.utils.set_progress_bar_global_hook(saved_hook)
        args.preview_method = saved_method


def _proposals(comfy_sdxl, count=2, steps=2):
    node = pack_module("nodes.proposals").ProposalSampler
    model, clip, vae = comfy_sdxl
    return node.execute(model, clip, vae, "a photo of a blob", "", count, 0, steps, 4.0, "euler", 32, 32, 2)


def _trainer(comfy_sdxl, images, steps=4, name="contract"):
    node = pack_module("nodes.chosen_one_training").LoraTITrainer
    model, clip, vae = comfy_sdxl
    return node.execute(model, clip, vae, images, name, "blob", "a photo of {}", steps, 1, 2, 2.0, 1e-3, 1e-3, 0, True)


def test_sampling_and_training_show_progress_with_previews(comfy_sdxl, progress_events):
    images = _proposals(comfy_sdxl, count=2, steps=3).result[0]
    sampling = list(progress_events)
    assert [value for value, _, _ in sampling] == [1, 2, 3] and all(total == 3 for _, total, _ in sampling)
    assert all(preview is not None and preview[0] == "JPEG" for _, _, preview in sampling)
    progress_events.clear()
    _trainer(comfy_sdxl, images, steps=4)
    assert [value for value, _, _ in progress_events] == [1, 2, 3, 4]
    assert all(preview is not None for _, _, preview in progress_events)  # the loss curve so far


def test_long_nodes_stop_on_interrupt(comfy_sdxl, progress_events):
    import comfy.model_management
    import folder_paths

    images = torch.rand(2, 32, 32, 3)
    for run in (lambda: _proposals(comfy_sdxl, steps=5), lambda: _trainer(comfy_sdxl, images, 5, "interrupted")):
        progress_events.clear()
        comfy.model_management.interrupt_current_processing(True)
        try:
            with pytest.raises(comfy.model_management.InterruptProcessingException):
                run()
        finally:
            comfy.model_management.interrupt_current_processing(False)
        assert len(progress_events) == 0  # stopped within the first step
    lora = os.path.join(folder_paths.get_folder_paths("loras")[0], "interrupted.safetensors")
    assert not os.path.exists(lora)


def test_trainers_refuse_existing_files_before_any_work(comfy_sdxl, progress_events):
    import folder_paths

    embedding = os.path.join(folder_paths.get_folder_paths("embeddings")[0], "taken.safetensors")
    open(embedding, "wb").close()
    with pytest.raises(ValueError, match="already exists"):
        pack_module("nodes.chosen_one_training").LoraTITrainer.execute(
            *comfy_sdxl, torch.rand(2, 32, 32, 3), "taken", "blob", "a photo of {}", 3, 1, 2, 2.0, 1e-3, 1e-3, 0, False)
    assert not progress_events  # nothing was trained
