"""The shipped sprite-world models load through the real loader and draw what their prompts ask."""

from __future__ import annotations

import pytest

from protagonist.bench.harness import SamplingSettings, draw
from protagonist.sprites.captions import parse_prompt
from protagonist.sprites.models import load_sprite_model
from protagonist.sprites.oracle import Oracle

PROMPTS = ["a blob on a beach, on the left", "a red blob at night, on the right", "a blob in the snow, in the center",
           "a green blob in a forest, on the left"]


@pytest.mark.parametrize("family", ["sdxl", "flux"])
def test_shipped_model_follows_the_context_of_its_prompts(family):
    backend = load_sprite_model(family)
    assert backend.family == family and backend.vae_scale == 4
    images = draw(backend, PROMPTS, [11, 12, 13, 14], SamplingSettings(steps=12, cfg=5.0))
    reading = Oracle.load().read(images)
    for i, prompt in enumerate(PROMPTS):
        named = parse_prompt(prompt)
        assert reading.names(i)["background"] == named["background"], (family, prompt, reading.names(i))
        assert reading.names(i)["position"] == named["position"], (family, prompt, reading.names(i))


def test_missing_model_says_how_to_train_it(monkeypatch, tmp_path):
    from protagonist.sprites import models

    monkeypatch.setattr(models, "SDXL_DIR", tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="train_models sdxl"):
        models.load_sprite_model("sdxl")
