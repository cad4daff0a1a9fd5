"""The Chosen One loop on tiny models: rounds persist, and a resumed run equals an uninterrupted one."""

from __future__ import annotations

import json

import pytest
import torch
from protagonist.core.chosen_one.identity_file import export_for_comfyui, load_identity
from protagonist.core.chosen_one.loop import ChosenOneSettings, _train, run_chosen_one
from protagonist.core.chosen_one.training import IdentityTraining
from protagonist.core.embedding import embed_images
from protagonist.core.interface import ProtagonistError
from protagonist.core.proposals import ProposalSettings
from protagonist.core.tiny_models import tiny_dinov2
from safetensors.torch import load_file


class Interrupt(Exception):
    pass


@pytest.fixture(scope="module")
def embed():
    model = tiny_dinov2(0).eval()
    return lambda images: embed_images(model, images)


def _settings(**changes) -> ChosenOneSettings:
    base = ChosenOneSettings(
        prompt="a photo of a red blob", init_word="blob", identity_prompt="a photo of {}",
        proposals=ProposalSettings(count=6, seed=3, steps=2, cfg=3.0, height=32, width=32, batch_size=6),
        clusters=2, min_cluster_size=2, training=IdentityTraining(steps=2, lora_lr=1e-3, token_lr=1e-2),
        max_rounds=2, convergence_threshold=0.0)
    for key, value in changes.items():
        setattr(base, key, value)
    return base


def test_two_rounds_persist_everything(tiny_sdxl_backend, embed, tmp_path):
    result = run_chosen_one(tiny_sdxl_backend, _settings(), embed, tmp_path)
    assert [r.index for r in result.rounds] == [0, 1] and not result.converged
    for index in (0, 1):
        folder = tmp_path / f"round_{index:02d}"
        assert {p.name for p in folder.iterdir()} >= {"proposals.safetensors", "cluster.json",
                                                       "identity.safetensors", "round.json"}
        cluster = json.loads((folder / "cluster.json").read_text())
        assert len(cluster["indices"]) >= 2 and sum(cluster["sizes"]) == 6
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["converged"] is False
    assert summary["final_spread"] > 0  # the spread of the last proposals, also when the round limit stopped it
    assert not any("lora" in name for name, _ in tiny_sdxl_backend.denoiser.named_parameters())


def test_resume_equals_uninterrupted(tiny_sdxl_backend, embed, tmp_path):
    straight = run_chosen_one(tiny_sdxl_backend, _settings(), embed, tmp_path / "straight")

    def stop_in_round_one(index, stage, images):
        if index == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        run_chosen_one(tiny_sdxl_backend, _settings(), embed, tmp_path / "resumed", callback=stop_in_round_one)
    assert not (tmp_path / "resumed" / "round_01").exists()
    resumed = run_chosen_one(tiny_sdxl_backend, _settings(), embed, tmp_path / "resumed")
    for key, value in straight.identity.token.vectors.items():
        assert torch.equal(resumed.identity.token.vectors[key], value)
    assert all(torch.equal(resumed.identity.lora[k], v) for k, v in straight.identity.lora.items())


def test_converges_when_the_spread_drops(tiny_sdxl_backend, embed, tmp_path):
    result = run_chosen_one(tiny_sdxl_backend, _settings(convergence_threshold=1e9), embed, tmp_path)
    assert result.converged and len(result.rounds) == 1


def test_bad_settings_fail_before_any_work(tiny_sdxl_backend, embed, tmp_path):
    with pytest.raises(ProtagonistError, match="at least 12 images"):
        run_chosen_one(tiny_sdxl_backend, _settings(min_cluster_size=6), embed, tmp_path)
    with pytest.raises(ProtagonistError, match="not one"):
        run_chosen_one(tiny_sdxl_backend, _settings(init_word="red blob"), embed, tmp_path)
    with pytest.raises(ProtagonistError, match="`lora_noisiest_share`.*got 1.5"):
        run_chosen_one(tiny_sdxl_backend, _settings(lora_noisiest_share=1.5), embed, tmp_path)
    with pytest.raises(ProtagonistError, match="`last_check_count`.*at least 2.*got 1"):
        run_chosen_one(tiny_sdxl_backend, _settings(last_check_count=1), embed, tmp_path)
    assert not any(tmp_path.iterdir())


def test_the_set_after_the_last_round_only_measures_its_spread_with_fewer_proposals(tiny_sdxl_backend, embed,
                                                                                  tmp_path):
    def record(index, stage, images):
        drawn.append(images)

    def final_spread(run_dir):
        return json.loads((run_dir / "summary.json").read_text())["final_spread"]

    drawn = []
    full = run_chosen_one(tiny_sdxl_backend, _settings(), embed, tmp_path / "full", callback=record)
    full_check = drawn[-1]
    drawn.clear()
    spread = final_spread(tmp_path / "full")
    resumed = run_chosen_one(tiny_sdxl_backend, _settings(last_check_count=3), embed, tmp_path / "full",
                             callback=record)
    assert [len(images) for images in drawn] == [3]  # the rounds are kept; only the check after them is redrawn
    assert torch.equal(drawn[0], full_check[:3])  # each proposal from its own seed
    assert resumed.rounds == full.rounds and final_spread(tmp_path / "full") != spread
    drawn.clear()
    run_chosen_one(tiny_sdxl_backend, _settings(last_check_count=3), embed, tmp_path / "small", callback=record)
    assert [len(images) for images in drawn] == [6, 6, 3]


@pytest.mark.parametrize("margin, drawn_in_check", [(1e9, 6), (0.0, 3)])
def test_a_check_too_close_to_call_draws_the_rest_of_the_full_set(tiny_sdxl_backend, embed, tmp_path, margin,
                                                                 drawn_in_check):
    def record(index, stage, images):
        drawn.append(images)

    def summary(run_dir):
        return json.loads((run_dir / "summary.json").read_text())

    drawn = []
    # four scenes for checks of 3 and 6: the other 3 proposals keep their own scenes, not the first 3's
    settings = _settings(max_rounds=3, keep_tightest=True,
                         scenes=("on a beach", "in a forest", "in the snow", "at night"))
    run_chosen_one(tiny_sdxl_backend, settings, embed, tmp_path / "full", callback=record)
    full_check, full = drawn[-1], summary(tmp_path / "full")
    drawn.clear()
    settings.last_check_count, settings.last_check_margin = 3, margin
    run_chosen_one(tiny_sdxl_backend, settings, embed, tmp_path / "full", callback=record)
    assert len(drawn) == 1 and len(drawn[0]) == drawn_in_check
    torch.testing.assert_close(drawn[0], full_check[:drawn_in_check], rtol=0, atol=1e-5)  # batched apart
    checked = summary(tmp_path / "full")
    if drawn_in_check == 6:  # the full check's spread, and so its choice of round
        assert checked["final_spread"] == pytest.approx(full["final_spread"], rel=1e-5)
        assert checked["kept_round"] == full["kept_round"]
    else:
        assert checked["final_spread"] != pytest.approx(full["final_spread"], rel=1e-5)


def test_round_0_may_train_for_fewer_steps_than_later_rounds(tiny_sdxl_backend, embed, tmp_path):
    def record(step, loss):
        steps[-1] += 1

    def new_round(index, stage, images):
        steps.append(0)

    steps = []
    run_chosen_one(tiny_sdxl_backend, _settings(first_round_training_steps=1, max_rounds=3), embed, tmp_path,
                   callback=new_round, train_callback=record)
    assert steps == [1, 2, 2, 0]  # the check after the last round trains nothing


def test_identity_file_and_comfyui_exports(tiny_sdxl_backend, embed, tmp_path):
    result = run_chosen_one(tiny_sdxl_backend, _settings(max_rounds=1), embed, tmp_path / "run")
    identity = load_identity(tmp_path / "run" / "round_00" / "identity.safetensors", family="sdxl")
    assert torch.equal(identity.token.vectors["clip_g"], result.identity.token.vectors["clip_g"])
    with pytest.raises(ProtagonistError, match="flux"):
        load_identity(tmp_path / "run" / "round_00" / "identity.safetensors", family="flux")
    lora, embedding = export_for_comfyui(identity, tmp_path / "hero.safetensors", tmp_path / "hero_emb.safetensors")
    assert set(load_file(str(embedding))) == {"clip_l", "clip_g"}
    assert all(k.startswith("lora_unet_") for k in load_file(str(lora)))
    with pytest.raises(ProtagonistError, match="already exists"):
        export_for_comfyui(identity, tmp_path / "hero.safetensors", tmp_path / "other.safetensors")


def test_scenes_vary_the_proposals_and_caption_the_cluster(tiny_sdxl_backend, embed, tmp_path, monkeypatch):
    seen: list[str] = []
    encode = tiny_sdxl_backend.encode_prompts
    monkeypatch.setattr(tiny_sdxl_backend, "encode_prompts",
                        lambda prompts, *a, **k: seen.extend(prompts) or encode(prompts, *a, **k))
    settings = _settings(scenes=("on a beach", "in a forest"), max_rounds=1,
                         training=IdentityTraining(steps=4, templates=("a photo of {}",), lora_lr=1e-3, token_lr=1e-2))
    result = run_chosen_one(tiny_sdxl_backend, settings, embed, tmp_path)
    proposal_prompts = seen[:7]  # the negative, then the six proposals' prompts in one batch
    assert proposal_prompts[1:] == ["a photo of a red blob on a beach", "a photo of a red blob in a forest"] * 3
    chosen = result.rounds[0].chosen
    captions = set(seen[7:-7])  # between round 0's proposals and round 1's (negative + six prompts)
    assert captions and captions <= {f"a photo of <protagonist> {settings.scenes[i % 2]}" for i in chosen}


def test_cluster_expansion_applies_once_an_identity_draws_the_proposals(tiny_sdxl_backend, embed, tmp_path,
                                                                       monkeypatch):
    from protagonist.core.chosen_one import loop

    expansions: list[float] = []
    choose = loop.most_cohesive_cluster
    monkeypatch.setattr(loop, "most_cohesive_cluster",
                        lambda *a, **k: expansions.append(k["expansion"]) or choose(*a, **k))
    run_chosen_one(tiny_sdxl_backend, _settings(cluster_expansion=1.5), embed, tmp_path)
    assert expansions == [1.0, 1.5]  # round 0's proposals show many characters: no single one to grow
    cluster = json.loads((tmp_path / "round_01" / "cluster.json").read_text())
    assert set(cluster["added"]) <= set(cluster["indices"])



@pytest.mark.parametrize("keep_tightest, kept", [(True, 0), (False, 1)])
def test_the_identity_whose_proposals_spread_least_is_kept(tiny_sdxl_backend, embed, tmp_path, monkeypatch,
                                                          keep_tightest, kept):
    from protagonist.core.chosen_one import loop

    spreads = iter([10.0, 3.0, 8.0])  # round 0's proposals, then those drawn by round 0's and round 1's identity
    monkeypatch.setattr(loop, "mean_pairwise_distance", lambda *a: next(spreads))
    result = run_chosen_one(tiny_sdxl_backend, _settings(keep_tightest=keep_tightest), embed, tmp_path)
    assert result.kept_round == kept and len(result.rounds) == 2
    assert json.loads((tmp_path / "summary.json").read_text())["kept_round"] == kept
    stored = load_identity(tmp_path / f"round_{kept:02d}" / "identity.safetensors")
    assert all(torch.equal(result.identity.lora[k], stored.lora[k]) for k in stored.lora)


def test_tightest_round_reads_each_identity_by_the_proposals_it_drew():
    from protagonist.core.chosen_one.loop import RoundResult, tightest_round

    rounds = [RoundResult(i, spread, [], [], None) for i, spread in enumerate([10.0, 4.0, 6.0])]
    assert tightest_round(rounds, final_spread=5.0) == 0
    assert tightest_round(rounds, final_spread=3.0) == 2


def test_resuming_with_other_settings_is_refused_and_keeps_the_rounds(tiny_sdxl_backend, embed, tmp_path):
    run_chosen_one(tiny_sdxl_backend, _settings(max_rounds=1), embed, tmp_path)
    kept = (tmp_path / "round_00" / "identity.safetensors").read_bytes()
    with pytest.raises(ProtagonistError, match=r"other settings \(prompt: 'a photo of a red blob' → 'a photo of a "
                                               r"blue blob'\); give the run another name"):
        run_chosen_one(tiny_sdxl_backend, _settings(prompt="a photo of a blue blob"), embed, tmp_path)
    with pytest.raises(ProtagonistError, match=r"training.steps: 2 → 3"):
        run_chosen_one(tiny_sdxl_backend, _settings(training=IdentityTraining(steps=3, lora_lr=1e-3, token_lr=1e-2)),
                       embed, tmp_path)
    assert (tmp_path / "round_00" / "identity.safetensors").read_bytes() == kept
    more = _settings(max_rounds=2, keep_tightest=True)
    more.proposals.batch_size = 3  # stopping, selection and batching may change on resume
    assert [r.index for r in run_chosen_one(tiny_sdxl_backend, more, embed, tmp_path).rounds] == [0, 1]


def test_a_run_folder_from_before_a_setting_existed_resumes_under_its_old_value(tiny_sdxl_backend, embed, tmp_path):
    run_chosen_one(tiny_sdxl_backend, _settings(max_rounds=1), embed, tmp_path)
    recorded = json.loads((tmp_path / "settings.json").read_text())
    del recorded["proposals.cfg_end"]  # as a run folder made before guidance could end early holds it
    (tmp_path / "settings.json").write_text(json.dumps(recorded))
    assert [r.index for r in run_chosen_one(tiny_sdxl_backend, _settings(), embed, tmp_path).rounds] == [0, 1]
    early_end = _settings()
    early_end.proposals.cfg_end = 0.5
    with pytest.raises(ProtagonistError, match=r"proposals.cfg_end: 1.0 → 0.5"):
        run_chosen_one(tiny_sdxl_backend, early_end, embed, tmp_path)


def test_how_the_identity_draws_afterwards_changes_no_round(tiny_sdxl_backend, embed, tmp_path):
    """`lora_noisiest_share` is for drawing the result: the loop's proposals keep the LoRA on every step, and a
    run resumes under another value."""
    def round_1_proposals(run_dir):
        return load_file(str(run_dir / "round_01" / "proposals.safetensors"))["images"]

    fast_lora = IdentityTraining(steps=2, lora_lr=3e-2, token_lr=1e-2)  # a LoRA that shows in two steps
    four_steps = ProposalSettings(count=6, seed=3, steps=4, cfg=3.0, height=32, width=32, batch_size=6)
    whole = _settings(training=fast_lora, proposals=four_steps)
    run_chosen_one(tiny_sdxl_backend, whole, embed, tmp_path / "whole")
    run_chosen_one(tiny_sdxl_backend, _settings(training=fast_lora, proposals=four_steps, lora_noisiest_share=0.3,
                                                max_rounds=1), embed, tmp_path / "noisiest")
    recorded = json.loads((tmp_path / "noisiest" / "settings.json").read_text())
    recorded["lora_noisiest_share"] = 0.3  # as a folder made while the setting still shaped the rounds holds it
    (tmp_path / "noisiest" / "settings.json").write_text(json.dumps(recorded))
    resumed = run_chosen_one(tiny_sdxl_backend, whole, embed, tmp_path / "noisiest")
    assert [r.index for r in resumed.rounds] == [0, 1]
    assert torch.equal(round_1_proposals(tmp_path / "whole"), round_1_proposals(tmp_path / "noisiest"))


def test_an_identity_drawn_on_every_level_draws_as_its_lora_on_every_step(tiny_sdxl_backend):
    from protagonist.core.adapters import LoraAdapter, lora_applied
    from protagonist.core.chosen_one.loop import identity_on_noisiest
    from protagonist.core.chosen_one.training import LearnedIdentity, new_token
    from protagonist.core.sampling import cfg_guidance, sample

    adapter = LoraAdapter(tiny_sdxl_backend.denoiser, rank=2, alpha=2.0)
    for parameter in adapter.parameters():
        torch.nn.init.normal_(parameter, std=0.05, generator=torch.Generator().manual_seed(3))
    identity = LearnedIdentity(new_token(tiny_sdxl_backend, "<x>", "blob"), adapter.state_dict(), 2, 2.0, [])
    adapter.remove()
    with torch.no_grad():
        cond = tiny_sdxl_backend.encode_prompts(["a photo of a blob"])
    sigmas = torch.tensor([14.6, 2.0, 1e-4, 0.0])  # a last step below every level of the training schedule
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with lora_applied(tiny_sdxl_backend.denoiser, identity.lora, 2, 2.0):
        every_step = sample(tiny_sdxl_backend, [cond], noise, 3, cfg_guidance(1.0), sigmas=sigmas)
    with identity_on_noisiest(tiny_sdxl_backend, identity, 1.0) as lora:
        drawn = sample(tiny_sdxl_backend, [cond], noise, 3, cfg_guidance(1.0), sigmas=sigmas,
                       before_step=lora.before_step)
    assert torch.equal(every_step, drawn)


def test_a_round_starts_from_the_base_model_unless_warm_started(tiny_sdxl_backend):
    """`fast` trains each round afresh, as `paper` does: nothing of the previous round's identity carries over.
    With `warm_start` the round continues the previous identity's LoRA and token instead."""
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    settings = _settings(training=IdentityTraining(steps=2, batch_size=2, lora_lr=1e-2, token_lr=1e-2))
    previous = _train(tiny_sdxl_backend, settings, images, None, None, 0)
    fresh = _train(tiny_sdxl_backend, settings, images, None, None, 1)
    cold = _train(tiny_sdxl_backend, settings, images, None, previous, 1)
    warm = _train(tiny_sdxl_backend, _settings(training=settings.training, warm_start=True), images, None, previous, 1)
    assert all(torch.equal(cold.lora[k], fresh.lora[k]) for k in fresh.lora)
    assert all(torch.equal(cold.token.vectors[k], fresh.token.vectors[k]) for k in fresh.token.vectors)
    assert max((warm.lora[k] - fresh.lora[k]).abs().max() for k in fresh.lora) > 1e-4
