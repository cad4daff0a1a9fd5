"""Every shipped workflow runs: its API twin executes in real ComfyUI with tiny models in place of the loaders."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from protagonist.core.checkpoint import atomic_save_tensors
from protagonist.core.dsd.convert import FORMAT as DSD_FORMAT
from protagonist.core.dsd.two_frame import new_c_embedder
from protagonist.core.oneactor.identity import make_identity, save_identity
from protagonist.core.oneactor.tuning import new_projector
from protagonist.core.tiny_models import tiny_dinov2, tiny_flux

from .helpers import run_prompt
from .workflow_api import load_workflow, notes, shrink, ui_to_api, workflow_names
from .workflow_specs import DINOV2, DSD_FILE, IDENTITY_FILE, POSE_IMAGES, REFERENCE_IMAGE, WORKFLOWS

WORKFLOWS_DIR = Path(__file__).resolve().parents[2] / "workflows"
LOADERS = {"CheckpointLoaderSimple": "ProtagonistTest_TinySDXL", "UNETLoader": "ProtagonistTest_TinyFluxModel",
           "DualCLIPLoader": "ProtagonistTest_TinyFluxClip", "VAELoader": "ProtagonistTest_TinyFluxVae",
           "ControlNetLoader": "ProtagonistTest_TinyControlNet"}
SMALL = 32  # pixels
BLOB = "a photo of a blob on the beach"  # the tiny models' vocabulary has no "man"
OVERRIDES = {
    # (the name: the test session's models/embeddings already holds a "hero")
    "chosen_one_full_loop": {("Protagonist_ChosenOneLoop", "width"): SMALL, ("Protagonist_ChosenOneLoop", "height"): SMALL,
                             ("Protagonist_ChosenOneLoop", "init_word"): "blob", ("KSampler", "steps"): 2,
                             ("Protagonist_ChosenOneLoop", "name"): "workflow_hero",
                             ("EmptyLatentImage", "width"): SMALL, ("EmptyLatentImage", "height"): SMALL},
    "chosen_one_one_round": {("Protagonist_ProposalSampler", "count"): 8, ("Protagonist_ProposalSampler", "steps"): 2,
                             ("Protagonist_ProposalSampler", "width"): SMALL,
                             ("Protagonist_ProposalSampler", "height"): SMALL,
                             ("Protagonist_ProposalSampler", "batch_size"): 8,
                             ("Protagonist_KMeansCohesiveCluster", "clusters"): 2,
                             ("Protagonist_KMeansCohesiveCluster", "min_cluster_size"): 2,
                             ("Protagonist_LoraTITrainer", "steps"): 3, ("Protagonist_LoraTITrainer", "init_word"): "blob",
                             ("Protagonist_LoraTITrainer", "batch_size"): 2},
    "oneactor_tune_generate": {("Protagonist_ProposalSampler", "count"): 4, ("Protagonist_ProposalSampler", "steps"): 2,
                               ("Protagonist_ProposalSampler", "width"): SMALL,
                               ("Protagonist_ProposalSampler", "height"): SMALL,
                               ("Protagonist_ProposalSampler", "prompt"): BLOB,
                               ("Protagonist_OneActorProjectorTrainer", "steps"): 2,
                               ("Protagonist_OneActorProjectorTrainer", "base_word"): "blob",
                               ("Protagonist_OneActorSampler", "prompt"): f"{BLOB}\na blob at night\na blob in the snow",
                               ("Protagonist_OneActorSampler", "steps"): 2, ("Protagonist_OneActorSampler", "width"): SMALL,
                               ("Protagonist_OneActorSampler", "height"): SMALL},
    "dsd_two_frame_generation": {("Protagonist_TwoFrameDiTSampler", "side"): 64,
                                 ("Protagonist_TwoFrameDiTSampler", "steps"): 2},
    "dsd_pair_mining": {("EmptySD3LatentImage", "width"): 64, ("EmptySD3LatentImage", "height"): 64,
                        ("EmptySD3LatentImage", "batch_size"): 1, ("KSampler", "steps"): 2,
                        ("Protagonist_PairFilter", "threshold"): -1.0},
    "storyboard": {("EmptyLatentImage", "width"): SMALL, ("EmptyLatentImage", "height"): SMALL,
                   ("BasicScheduler", "steps"): 2, ("PrimitiveStringMultiline", "value"): BLOB},
}


def constant_node(node_id: str, outputs: list, values: tuple):
    from comfy_api.v0_0_2 import io

    class Constant(io.ComfyNode):
        @classmethod
        def define_schema(cls):
            return io.Schema(node_id=node_id, category="testing", inputs=[], outputs=outputs)

        @classmethod
        def execute(cls):
            return io.NodeOutput(*values)

    return Constant


@pytest.fixture(scope="module")
def tiny_world(comfy_nodes, comfy_sdxl, comfy_backend, diffusers_sdxl):
    """Tiny loaders registered, and every file the workflows name (DINOv2, identity, DSD, images) in place."""
    import folder_paths
    from comfy_api.v0_0_2 import io

    from . import tiny_comfy

    flux = tiny_flux(0)
    for module in flux.modules().values():
        module.eval()
    flux_model = tiny_comfy.comfy_flux_model(flux.transformer)
    flux_model.model.latent_format.latent_channels = flux.vae.config.latent_channels  # so empty latents fit
    nodes = {
        "ProtagonistTest_TinySDXL": ([io.Model.Output(), io.Clip.Output(), io.Vae.Output()], comfy_sdxl),
        "ProtagonistTest_TinyFluxModel": ([io.Model.Output()], (flux_model,)),
        "ProtagonistTest_TinyFluxClip": ([io.Clip.Output()], (tiny_comfy.DiffusersFluxClip(flux),)),
        "ProtagonistTest_TinyFluxVae": ([io.Vae.Output()], (tiny_comfy.comfy_vae(flux.vae),)),
        "ProtagonistTest_TinyControlNet": ([io.ControlNet.Output()],
                                           (tiny_comfy.comfy_controlnet(diffusers_sdxl.unet),)),
    }
    for node_id, (outputs, values) in nodes.items():
        comfy_nodes.NODE_CLASS_MAPPINGS[node_id] = constant_node(node_id, outputs, values)

    dinov2 = Path(folder_paths.get_folder_paths("dinov2")[0]) / DINOV2
    if not dinov2.exists():
        tiny_dinov2(0).save_pretrained(str(dinov2))
    protagonist = Path(folder_paths.get_folder_paths("protagonist")[0])
    features = torch.randn(3, 64, 4, 4, generator=torch.Generator().manual_seed(0))
    save_identity(make_identity(new_projector(comfy_backend, features, 0), features, "blob", "sdxl"),
                  protagonist / IDENTITY_FILE)
    c_embedder = new_c_embedder(flux.image_embedder())
    atomic_save_tensors({f"c_embedder.{k}": v.detach().clone() for k, v in c_embedder.state_dict().items()},
                        protagonist / DSD_FILE, {"format": DSD_FORMAT})
    input_dir = Path(folder_paths.get_output_directory()).parent / "input"
    input_dir.mkdir(exist_ok=True)
    folder_paths.set_input_directory(str(input_dir))
    Image.new("RGB", (48, 40), (200, 80, 40)).save(input_dir / REFERENCE_IMAGE)
    for name in POSE_IMAGES:
        (input_dir / name).write_bytes((WORKFLOWS_DIR / "poses" / name).read_bytes())
    for node_id in ("Protagonist_LoadOneActorIdentity", "Protagonist_LoadDSD"):
        comfy_nodes.NODE_CLASS_MAPPINGS[node_id].GET_SCHEMA()  # refresh the file lists
    return comfy_nodes


def test_every_feature_has_a_workflow_with_thumbnail_and_note():
    assert workflow_names() == sorted(WORKFLOWS)
    for name in workflow_names():
        thumbnail = WORKFLOWS_DIR / f"{name}.jpg"
        assert thumbnail.exists() and 0 < thumbnail.stat().st_size <= 64_000, name
        with Image.open(thumbnail) as image:
            assert image.format == "JPEG" and image.width >= 256
        texts = notes(load_workflow(name))
        assert len(texts) == 1 and len(texts[0]) > 200, f"{name} needs one note explaining what to set"


@pytest.mark.parametrize("name", sorted(WORKFLOWS))
def test_workflow_converts_against_the_live_registry(comfy_nodes, name):
    prompt = ui_to_api(load_workflow(name), comfy_nodes.NODE_CLASS_MAPPINGS)
    assert prompt and all(n["class_type"] in comfy_nodes.NODE_CLASS_MAPPINGS for n in prompt.values())


def test_a_renamed_input_breaks_the_conversion(comfy_nodes):
    from .workflow_api import WorkflowError

    workflow = load_workflow("dsd_two_frame_generation")
    node = next(n for n in workflow["nodes"] if n["type"] == "Protagonist_TwoFrameDiTSampler")
    next(i for i in node["inputs"] if i["name"] == "steps")["widget"]["name"] = "num_steps"
    with pytest.raises(WorkflowError, match="renamed"):
        ui_to_api(workflow, comfy_nodes.NODE_CLASS_MAPPINGS)
    node["widgets_values"].append(1)
    with pytest.raises(WorkflowError, match="widget values"):
        ui_to_api(workflow, comfy_nodes.NODE_CLASS_MAPPINGS)


def _saved_images(outputs: dict, node_type: str, prompt: dict) -> list[Image.Image]:
    import folder_paths

    images = []
    for node_id, node in prompt.items():
        if node["class_type"] == node_type and node_id in outputs:
            for entry in outputs[node_id]["images"]:
                path = Path(folder_paths.get_directory_by_type(entry["type"])) / entry["subfolder"] / entry["filename"]
                images.append(Image.open(path))
    return images


@pytest.mark.parametrize("name", sorted(WORKFLOWS))
def test_workflow_twin_runs(tiny_world, name):
    prompt = ui_to_api(load_workflow(name), tiny_world.NODE_CLASS_MAPPINGS)
    twin = shrink(prompt, LOADERS, OVERRIDES[name])
    outputs, executor = run_prompt(twin)
    cached = [data["nodes"] for event, data in executor.status_messages if event == "execution_cached"]
    assert cached == [[]], cached  # every node really ran
    saved = _saved_images(outputs, "SaveImage", twin)
    expected = {"chosen_one_full_loop": 1, "chosen_one_one_round": 8, "oneactor_tune_generate": 3,
                "dsd_two_frame_generation": 1, "dsd_pair_mining": 24, "storyboard": 1}[name]
    assert len(saved) == expected, [image.size for image in saved]
    if name == "storyboard":  # 2 × 2 square panels, 16 px apart
        page = saved[0]
        assert page.width == page.height and (page.width - 16) % 2 == 0 and page.width > 16, page.size
