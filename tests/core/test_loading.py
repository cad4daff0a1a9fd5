"""Loading a backend from a local diffusers folder (never the network)."""

from __future__ import annotations

import json

import pytest
import torch

from protagonist.core.backends.loading import detect_family, load_backend
from protagonist.core.interface import ProtagonistError
from protagonist.core.sampling import seeded_noise
from protagonist.core.tiny_models import tiny_flux_components, tiny_sdxl_components


@pytest.fixture(scope="module")
def sdxl_folder(tmp_path_factory):
    from diffusers import StableDiffusionXLPipeline

    folder = tmp_path_factory.mktemp("tiny-sdxl")
    StableDiffusionXLPipeline(**tiny_sdxl_components(0)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def flux_folder(tmp_path_factory):
    from diffusers import FluxPipeline

    folder = tmp_path_factory.mktemp("tiny-flux")
    FluxPipeline(**tiny_flux_components(0)).save_pretrained(folder)
    return folder


def _same_prediction(loaded, reference, sigma):
    x = seeded_noise([0, 1], reference.latent_shape(2, 32, 32))
    with torch.no_grad():
        a = loaded.predict(x, torch.tensor(sigma), [loaded.encode_prompts(["a photo of blob", "a red cat"])])
        b = reference.predict(x, torch.tensor(sigma), [reference.encode_prompts(["a photo of blob", "a red cat"])])
    return (a - b).abs().max().item()


def test_load_sdxl_folder(sdxl_folder, tiny_sdxl_backend):
    assert detect_family(str(sdxl_folder)) == "sdxl"
    backend = load_backend(str(sdxl_folder))
    assert backend.family == "sdxl"
    assert backend.dtype == torch.float32 and backend.device == torch.device("cpu")
    assert backend.schedule.prediction_type == "epsilon"
    assert _same_prediction(backend, tiny_sdxl_backend, 2.0) < 1e-5


def test_load_flux_folder(flux_folder, tiny_flux_backend):
    assert detect_family(str(flux_folder)) == "flux"
    backend = load_backend(str(flux_folder))
    assert backend.family == "flux"
    assert backend.dtype == torch.float32
    assert backend.schedule.prediction_type == "flow"
    assert _same_prediction(backend, tiny_flux_backend, 0.6) < 1e-5


def test_detect_family_reads_model_index(tmp_path):
    # the index wins over the folder's name
    folder = tmp_path / "my-sdxl-model"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    assert detect_family(str(folder)) == "flux"
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    assert detect_family(str(folder)) == "sdxl"
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusion3Pipeline"}))
    with pytest.raises(ProtagonistError) as error:
        detect_family(str(folder))
    assert "StableDiffusion3Pipeline" in str(error.value)
    # without an index: guessed from the name
    assert detect_family(str(tmp_path / "FLUX.1-dev")) == "flux"
    assert detect_family(str(tmp_path / "sd_xl_base_1.0.safetensors")) == "sdxl"


def test_unsupported_family_is_rejected(tmp_path):
    with pytest.raises(ProtagonistError):
        load_backend(str(tmp_path), family="sd15")


def test_bogus_hub_id_is_a_protagonist_error():
    """An id that is not cached offline fails with our message (HF_HUB_OFFLINE=1: no download attempt)."""
    with pytest.raises(ProtagonistError) as error:
        load_backend("protagonist-tests/definitely-not-a-model")
    assert "definitely-not-a-model" in str(error.value)


def test_missing_folder_is_a_protagonist_error(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(ProtagonistError) as error:
        load_backend(str(missing))
    assert "nope" in str(error.value)


def test_missing_flux_folder_is_a_protagonist_error(tmp_path):
    with pytest.raises(ProtagonistError):
        load_backend(str(tmp_path / "flux-nope"))
