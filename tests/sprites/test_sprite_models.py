"""The shipped sprite-world models load through the real loader and draw what their prompts ask."""

from __future__ import annotations

import argparse
import math

import pytest
import torch

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


def test_carry_over_vocabulary_keeps_known_rows_and_pools_at_the_new_eos():
    from transformers import CLIPTextModel

    from protagonist.core import tiny_models
    from protagonist.sprites.models import carry_over_vocabulary

    old = tiny_models.clip_tokenizer(["a", "blob", "hat"], max_length=16)
    new = tiny_models.clip_tokenizer(["a", "blob", "hat", "hatted", "zebra"], max_length=16)
    torch.manual_seed(0)
    encoder = CLIPTextModel(tiny_models.clip_text_config(old, 32, layers=1)).eval()
    rows = encoder.get_input_embeddings().weight.detach().clone()
    with torch.no_grad():
        before = encoder(old("a blob", padding="max_length", return_tensors="pt").input_ids)
    added = carry_over_vocabulary(encoder, old, new)
    assert "hatted</w>" in added and "blob</w>" not in added
    table = encoder.get_input_embeddings().weight
    assert table.shape[0] == len(new)
    assert torch.equal(table[new.get_vocab()["hatted</w>"]], rows[old.get_vocab()["hat</w>"]])
    with torch.no_grad():
        after = encoder(new("a blob", padding="max_length", return_tensors="pt").input_ids)
    assert torch.allclose(before.last_hidden_state, after.last_hidden_state)
    assert torch.allclose(before.pooler_output, after.pooler_output)
    assert encoder.config.eos_token_id == new.eos_token_id != old.eos_token_id


def test_finetune_from_the_shipped_model_writes_a_loadable_model_and_numbers_its_stage(tmp_path):
    from protagonist.core.backends.loading import load_backend
    from protagonist.sprites.models import SDXL_DIR
    from protagonist.sprites.train_models import main

    out = tmp_path / "model"
    args = ["sdxl", "--finetune-from", str(SDXL_DIR), "--steps", "2", "--batch", "2", "--ema", "0.9",
            "--threads", "1", "--run-dir", str(tmp_path / "run"), "--out", str(out)]
    assert main(args) == 0
    card = (out / "MODEL_CARD.md").read_text()
    before = (SDXL_DIR / "MODEL_CARD.md").read_text()
    assert card.startswith(before.rstrip())
    assert f"## Stage {before.count('## Stage') + 2}:" in card
    assert not any("_name_or_path" in config.read_text() for config in out.rglob("config.json"))
    backend = load_backend(str(out), family="sdxl")
    assert backend.encode_prompts(["a one eyed hatted blob"]).embeds.isfinite().all()


def test_flux_finetune_can_first_teach_the_vae_grids_and_says_so(tmp_path):
    from safetensors.torch import load_file

    from protagonist.sprites.models import FLUX_DIR
    from protagonist.sprites.train_models import main

    out, run = tmp_path / "model", tmp_path / "run"
    args = ["flux", "--finetune-from", str(FLUX_DIR), "--vae-grid-steps", "2", "--steps", "1", "--batch", "8",
            "--threads", "1", "--run-dir", str(run), "--out", str(out)]
    assert main(args) == 0
    card = (out / "MODEL_CARD.md").read_text().split("## Stage ")[-1]
    assert card.startswith(f"{(FLUX_DIR / 'MODEL_CARD.md').read_text().count('## Stage') + 2}: the VAE taught")
    assert "2 steps teaching it to code 2×2 grids" in card and "--vae-grid-steps 2" in card
    assert (run / "vae-grids" / "checkpoint.json").exists()  # resumable like every training stage
    vae_file = "vae/diffusion_pytorch_model.safetensors"
    before, after = load_file(str(FLUX_DIR / vae_file)), load_file(str(out / vae_file))
    assert any(not torch.equal(before[k], after[k]) for k in before)



def test_flux_finetune_can_start_a_new_transformer_shift_the_grids_perturb_inputs_and_says_so(tmp_path):
    import json

    from safetensors.torch import load_file

    from protagonist.sprites.models import FLUX_DIR
    from protagonist.sprites.train_models import main

    out = tmp_path / "model"
    args = ["flux", "--finetune-from", str(FLUX_DIR), "--new-transformer", "2,1,1", "--init-seed", "3", "--steps", "1",
            "--batch", "8", "--grid-every", "1", "--grid-shift", "8", "--input-perturbation", "0.1", "--threads", "1",
            "--run-dir",
            str(tmp_path / "run"), "--out", str(out)]
    assert main(args) == 0
    config = json.loads((out / "transformer" / "config.json").read_text())
    assert (config["num_attention_heads"], config["num_layers"], config["num_single_layers"]) == (2, 1, 1)
    vae_file = "vae/diffusion_pytorch_model.safetensors"
    before, after = load_file(str(FLUX_DIR / vae_file)), load_file(str(out / vae_file))
    assert all(torch.equal(before[k], after[k]) for k in before)  # the source's VAE, untouched
    card = (out / "MODEL_CARD.md").read_text().split("## Stage ")[-1]
    assert "a new transformer of width 64 (1 double + 1 single blocks) trained from scratch" in card
    assert "--new-transformer 2,1,1 --init-seed 3" in card
    assert "; grids trained at flow shift 8; input perturbation 0.1" in card
    assert "--grid-shift 8.0 --input-perturbation 0.1" in card
    assert "flow shift 3.1582 for the single images' training noise levels and sampling" in card


@pytest.mark.parametrize("extra, expected_copies_of", [(1, [0]), (2, [0, 1]), (3, [0, 0, 1])])
def test_deepening_adds_identity_single_blocks_spread_through_the_stack_and_predicts_as_before(extra,
                                                                                             expected_copies_of):
    from diffusers import FluxTransformer2DModel

    from protagonist.core.tiny_models import flux_transformer_config
    from protagonist.sprites.models import deepen_single_stack

    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(**flux_transformer_config(
        latent_channels=4, context=16, pooled=16, layers=1, single_layers=2, heads=2, head_dim=16,
        rope_axes=(4, 6, 6))).eval()
    originals = list(transformer.single_transformer_blocks)
    inputs = dict(hidden_states=torch.randn(2, 4, 16), encoder_hidden_states=torch.randn(2, 3, 16),
                  pooled_projections=torch.randn(2, 16), timestep=torch.tensor([0.3, 0.8]), img_ids=torch.zeros(4, 3),
                  txt_ids=torch.zeros(3, 3), guidance=torch.tensor([3.0, 3.0]), return_dict=False)
    with torch.no_grad():
        before = transformer(**inputs)[0]
        deepen_single_stack(transformer, extra)
        after = transformer(**inputs)[0]
    assert torch.equal(before, after)
    blocks = list(transformer.single_transformer_blocks)
    assert transformer.config.num_single_layers == len(blocks) == 2 + extra
    added = [block for block in blocks if all(block is not original for original in originals)]
    assert [originals.index(_block_before(blocks, block, originals)) for block in added] == expected_copies_of
    assert all(torch.count_nonzero(block.proj_out.weight) == 0 for block in added)
    assert all(torch.equal(block.attn.to_q.weight, _block_before(blocks, block, originals).attn.to_q.weight)
               for block in added)


def _block_before(blocks, block, originals):
    """The last original block above `block` in the grown stack (the one it was copied from)."""
    return [b for b in blocks[:blocks.index(block)] if any(b is o for o in originals)][-1]


def test_a_deepened_flux_finetune_saves_the_grown_transformer_and_says_so(tmp_path):
    import json

    from protagonist.sprites.models import FLUX_DIR
    from protagonist.sprites.train_models import main

    out = tmp_path / "model"
    args = ["flux", "--finetune-from", str(FLUX_DIR), "--new-transformer", "2,1,1", "--deepen", "2", "--steps", "1",
            "--batch", "8", "--grid-every", "0", "--threads", "1", "--run-dir", str(tmp_path / "run"),
            "--out", str(out)]
    assert main(args) == 0
    config = json.loads((out / "transformer" / "config.json").read_text())
    assert (config["num_layers"], config["num_single_layers"]) == (1, 3)
    card = (out / "MODEL_CARD.md").read_text().split("## Stage ")[-1]
    assert "2 single blocks added to the transformer, each starting as the identity" in card
    assert "--new-transformer 2,1,1 --init-seed 0 --deepen 2 " in card


@pytest.mark.parametrize("argv", [["sdxl", "--finetune-from", "x", "--deepen", "1"], ["flux", "--deepen", "1"],
                                  ["flux", "--finetune-from", "x", "--deepen", "-1"]])
def test_deepening_is_refused_without_flux_a_source_or_a_positive_count(tmp_path, argv):
    from protagonist.sprites.train_models import main

    with pytest.raises(SystemExit):
        main([*argv, "--steps", "1", "--run-dir", str(tmp_path / "run"), "--out", str(tmp_path / "model")])
    assert not (tmp_path / "run").exists()


def test_a_run_stopped_early_saves_says_so_and_resumes_on_the_same_schedule(tmp_path):
    import json

    from protagonist.sprites.models import SDXL_DIR
    from protagonist.sprites.train_models import main

    run, out = tmp_path / "run", tmp_path / "model"
    args = ["sdxl", "--finetune-from", str(SDXL_DIR), "--steps", "4", "--batch", "2", "--threads", "1",
            "--run-dir", str(run), "--out", str(out)]
    assert main([*args, "--stop-after", "1"]) == 0
    assert json.loads((run / "finetune" / "checkpoint.json").read_text())["step"] == 1
    card = (out / "MODEL_CARD.md").read_text().split("## Stage ")[-1]
    assert "1 steps of a 4-step learning-rate schedule (stopped early)" in card
    assert "--steps 4 --stop-after 1 " in card
    assert main([*args, "--stop-after", "2"]) == 0
    assert json.loads((run / "finetune" / "checkpoint.json").read_text())["step"] == 2
    assert "--stop-after 2 " in (out / "MODEL_CARD.md").read_text()
    with pytest.raises(ValueError, match="already trained 2 steps"):
        main([*args, "--stop-after", "1"])
    assert "--stop-after 2 " in (out / "MODEL_CARD.md").read_text()  # the saved model is kept


@pytest.mark.parametrize("stop", ["0", "5"])
def test_stopping_outside_the_schedule_is_refused_before_any_training(tmp_path, stop):
    from protagonist.sprites.train_models import main

    with pytest.raises(SystemExit):
        main(["sdxl", "--steps", "4", "--stop-after", stop, "--run-dir", str(tmp_path / "run"),
              "--out", str(tmp_path / "model")])
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv", [["sdxl", "--finetune-from", "x", "--new-transformer", "8,2,6"],
                                  ["flux", "--new-transformer", "8,2,6"],
                                  ["flux", "--finetune-from", "x", "--new-transformer", "8,2"]])
def test_a_new_transformer_is_refused_without_flux_a_source_or_three_sizes(tmp_path, argv):
    from protagonist.sprites.train_models import main

    with pytest.raises(SystemExit):
        main([*argv, "--steps", "1", "--run-dir", str(tmp_path / "run"), "--out", str(tmp_path / "model")])
    assert not (tmp_path / "run").exists()


class LatentsOnly:
    """What `denoiser_loss` asks of a backend before the denoising error, which the tests replace."""

    def __init__(self, side: int):
        self.side = side

    def encode_images(self, images):
        return torch.zeros(len(images), 4, self.side, self.side)

    def encode_prompts(self, prompts, image_size=None):
        return None


def test_sprite_weighted_loss_is_the_plain_mean_at_weight_one_and_leans_on_the_character_above(monkeypatch):
    import protagonist.sprites.train_models as train_models

    error = torch.zeros(2, 4, 8, 8)
    error[..., :4] = 1.0  # the denoiser errs on the left half only
    monkeypatch.setattr(train_models, "denoising_error", lambda *args, **kwargs: error)
    images, masks = torch.zeros(2, 3, 32, 32), torch.zeros(2, 1, 32, 32)
    masks[..., :16] = 1.0  # and the character is on the left half
    assert train_models.sprite_weights(masks, 1.0) is None
    plain = train_models.denoiser_loss(LatentsOnly(8), images, ["a", "b"], torch.Generator().manual_seed(0))
    weighted = train_models.denoiser_loss(LatentsOnly(8), images, ["a", "b"], torch.Generator().manual_seed(0),
                                          pixel_weights=train_models.sprite_weights(masks, 3.0))
    assert plain.item() == pytest.approx(0.5)
    assert weighted.item() == pytest.approx(3.0 / 4.0)


def test_the_held_quadrant_is_left_out_of_the_grid_loss(monkeypatch):
    import protagonist.sprites.train_models as train_models

    seen = {}

    def error_on_held_positions(backend, latents, cond, generator, noise_scale=None, **unused_options):
        seen["scale"] = noise_scale
        return (noise_scale < 1).float().expand_as(latents).clone()  # the network errs only where held

    monkeypatch.setattr(train_models, "denoising_error", error_on_held_positions)
    loss = train_models.denoiser_loss(LatentsOnly(16), torch.zeros(4, 3, 64, 64), ["a"] * 4,
                                      torch.Generator().manual_seed(0), held_rate=1.0)
    assert (seen["scale"] < 1).any() and loss.item() == 0.0


def test_single_images_and_grids_draw_their_noise_at_their_own_flow_shift(monkeypatch, tmp_path):
    import protagonist.sprites.train_models as train_models
    from protagonist.core.backends.loading import backend_from_components
    from protagonist.sprites.models import build_flux

    shifts = []

    def recording_loss(backend, images, captions, generator, sigma_shift=None, **unused_options):
        shifts.append((images.shape[-1], sigma_shift))
        return next(backend.denoiser.parameters()).sum() * 0.0

    monkeypatch.setattr(train_models, "denoiser_loss", recording_loss)
    backend = backend_from_components("flux", build_flux())
    train_models.train_denoiser(backend, 4, 4, tmp_path / "run", seed=0, grid_every=2, grid_shift=8.0,
                                single_shift=6.0)
    assert shifts == [(32, 6.0), (64, 8.0), (32, 6.0), (64, 8.0)]


def test_flux_sprite_model_trains_and_samples_at_comfyuis_flux_shift():
    from protagonist.core.backends.loading import backend_from_components
    from protagonist.sprites.models import FLUX_FLOW_SHIFT, build_flux

    backend = backend_from_components("flux", build_flux())
    assert backend.schedule.shift == pytest.approx(FLUX_FLOW_SHIFT)
    assert FLUX_FLOW_SHIFT == pytest.approx(math.exp(1.15), rel=1e-4)
    median_training_sigma = backend.schedule.training_sigmas(4000, torch.Generator().manual_seed(0)).median()
    assert median_training_sigma > 0.7  # most training noise is heavy, where identity is decided


def test_hidden_modifiers_become_the_start_token_state_and_only_before_the_class_word():
    from protagonist.sprites.train_models import hide_modifiers, modifier_positions

    backend = load_sprite_model("sdxl")
    tokenizer = backend.tokenizers["clip_l"]
    prompts = ["a one eyed hatted red blob in a forest, on the left", "a blob with a hat on a beach", ""]
    adjectives = modifier_positions(tokenizer, prompts[0])
    assert tokenizer.convert_ids_to_tokens(tokenizer(prompts[0])["input_ids"])[adjectives.stop] == "blob</w>"
    assert [len(modifier_positions(tokenizer, p)) for p in prompts] == [len(adjectives), 0, 0]
    cond = backend.encode_prompts(prompts)
    hidden = hide_modifiers(backend, cond, prompts, 1.0, torch.Generator().manual_seed(0)).embeds
    changed = (hidden != cond.embeds).any(-1)
    assert changed[0].nonzero().flatten().tolist() == list(adjectives)
    assert not changed[1:].any()
    assert torch.equal(hidden[0, adjectives.start], cond.embeds[0, 0])
    kept = hide_modifiers(backend, cond, prompts, 0.0, torch.Generator().manual_seed(0)).embeds
    assert torch.equal(kept, cond.embeds)


def test_folded_modifiers_reach_the_denoiser_only_through_the_class_word_state():
    from protagonist.sprites.train_models import fold_modifiers, modifier_positions

    backend = load_sprite_model("sdxl")
    tokenizer = backend.tokenizers["clip_l"]
    prompts = ["a one eyed hatted red blob in a forest, on the left", "a blob with a hat on a beach", ""]
    cond = backend.encode_prompts(prompts)
    folded = fold_modifiers(backend, cond, prompts, 1.0, torch.Generator().manual_seed(0))
    bare = backend.encode_prompts(["a blob in a forest, on the left"])
    class_position = modifier_positions(tokenizer, prompts[0]).stop
    bare_class_position = modifier_positions(tokenizer, prompts[0]).start
    differs_from_bare = (folded.embeds[0] != bare.embeds[0]).any(-1)
    assert differs_from_bare.nonzero().flatten().tolist() == [bare_class_position]
    assert torch.equal(folded.embeds[0, bare_class_position], cond.embeds[0, class_position])
    assert torch.equal(folded.pooled[0], bare.pooled[0])
    assert torch.equal(folded.embeds[1:], cond.embeds[1:]) and torch.equal(folded.pooled[1:], cond.pooled[1:])
    kept = fold_modifiers(backend, cond, prompts, 0.0, torch.Generator().manual_seed(0))
    assert torch.equal(kept.embeds, cond.embeds)


def test_min_snr_shifts_and_input_perturbation_are_refused_for_a_wrong_family_or_value_before_training(tmp_path):
    from protagonist.sprites.train_models import main

    for argv in (["flux", "--min-snr", "5"], ["sdxl", "--min-snr", "-1"], ["sdxl", "--grid-shift", "8"],
                 ["flux", "--grid-shift", "0"], ["flux", "--input-perturbation", "-0.1"],
                 ["sdxl", "--input-perturbation", "1.5"], ["sdxl", "--single-shift", "6"],
                 ["flux", "--single-shift", "-1"]):
        with pytest.raises(SystemExit):
            main([*argv, "--steps", "1", "--run-dir", str(tmp_path / "run"), "--out", str(tmp_path / "model")])
    assert not (tmp_path / "run").exists()


def test_hiding_modifiers_is_refused_for_flux_before_any_training(tmp_path):
    from protagonist.sprites.train_models import main

    with pytest.raises(SystemExit):
        main(["flux", "--hide-modifiers", "0.5", "--steps", "1", "--run-dir", str(tmp_path / "run"),
              "--out", str(tmp_path / "model")])
    with pytest.raises(SystemExit):
        main(["flux", "--fold-modifiers", "0.5", "--steps", "1", "--run-dir", str(tmp_path / "run"),
              "--out", str(tmp_path / "model")])
    assert not (tmp_path / "run").exists()


def test_a_from_scratch_card_repeats_every_recipe_flag(tmp_path):
    from protagonist.sprites.model_cards import write_card

    args = argparse.Namespace(seed=20, vae_steps=1000, batch=32, steps=6500, grid_every=0, sprite_weight=6.0,
                              lr=5e-4, ema=0.999, hide_modifiers=0.0, fold_modifiers=0.8, prenominal=0.9,
                              held_panel=0.0, held_layout="one", min_snr=5.0, threads=2, stop_after=None,
                              grid_shift=None, input_perturbation=0.0, single_shift=None)
    write_card(tmp_path, "sdxl", args, [0.1], [0.05], {}, {"vae": 600.0, "denoiser": 3000.0}, 17_000_000)
    card = (tmp_path / "MODEL_CARD.md").read_text()
    for flag in ("--steps 6500", "--vae-steps 1000", "--threads 2", "--lr 0.0005", "--ema 0.999", "--sprite-weight 6.0",
                 "--fold-modifiers 0.8", "--prenominal 0.9", "--held-panel 0.0", "--min-snr 5.0", "--seed 20"):
        assert flag in card
    assert "folded into its state in 80% of captions" in card
    assert "min-SNR-γ loss weighting with γ = 5" in card


def test_a_card_names_the_many_held_layout_the_grid_shift_the_input_perturbation_and_their_flags(tmp_path):
    from protagonist.sprites.model_cards import write_card

    args = argparse.Namespace(seed=32, vae_steps=1000, batch=32, steps=3000, grid_every=2, sprite_weight=4.0,
                              lr=2e-4, ema=0.999, hide_modifiers=0.0, fold_modifiers=0.0, prenominal=0.9,
                              held_panel=0.75, held_layout="many", min_snr=0.0, threads=1, stop_after=None,
                              grid_shift=8.0, input_perturbation=0.1, single_shift=None)
    write_card(tmp_path, "flux", args, [0.1], [0.05], {}, {"vae": 600.0, "denoiser": 3000.0}, 7_700_000)
    card = (tmp_path / "MODEL_CARD.md").read_text()
    assert "--held-panel 0.75 --held-layout many --grid-shift 8.0 --input-perturbation 0.1" in card
    assert "input noised with 0.1× extra noise the target leaves out" in card
    assert "the grids' training noise levels drawn at flow shift 8" in card
    assert "flow shift 3.1582 for the single images' training noise levels and sampling" in card
    assert "one to three panels noised at their own lower level and left out of the loss in 75% of the grids" in card


@pytest.mark.parametrize("grid_shift, model_shift_sets", [
    (8.0, "flow shift 3.1582 for sampling (ComfyUI's FLUX default)"),
    (None, "flow shift 3.1582 for the grids' training noise levels and sampling (ComfyUI's FLUX default)")])
def test_a_card_names_the_single_images_shift_and_what_the_models_shift_still_sets(tmp_path, grid_shift,
                                                                                  model_shift_sets):
    from protagonist.sprites.model_cards import write_finetune_card

    args = argparse.Namespace(family="flux", seed=72, batch=32, steps=3000, grid_every=2, sprite_weight=4.0, lr=2e-4,
                              ema=0.999, hide_modifiers=0.0, fold_modifiers=0.0, prenominal=0.5, held_panel=0.0,
                              held_layout="one", min_snr=0.0, threads=1, stop_after=None, grid_shift=grid_shift,
                              input_perturbation=0.0, single_shift=6.0, vae_grid_steps=0, new_transformer=None,
                              init_seed=0, deepen=0)
    write_finetune_card(tmp_path, "# card", args, [0.3], 100.0, 25_000_000)
    card = (tmp_path / "MODEL_CARD.md").read_text()
    assert "single images trained at flow shift 6" in card
    assert "the single images' training noise levels drawn at flow shift 6" in card
    assert "--single-shift 6.0" in card
    assert model_shift_sets in card
