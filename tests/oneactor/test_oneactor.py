"""OneActor on tiny models: projector sizing, tuning, the guidance rule, batch independence, files, errors."""

from __future__ import annotations

import pytest
import torch

from protagonist.core.interface import ProtagonistError
from protagonist.core.oneactor.guidance import ClusterGuidance, cluster_guided_terms
from protagonist.core.oneactor.identity import load_identity, make_identity, save_identity
from protagonist.core.oneactor.projector import Projector
from protagonist.core.oneactor.tuning import OneActorTuning, ProposalSet, tune_projector, tune_projectors
from protagonist.core.proposals import ProposalSettings, generate_proposals
from protagonist.core.sampling import StepInfo, sample, seeded_noise


@pytest.fixture(scope="module")
def proposals(tiny_sdxl_backend):
    settings = ProposalSettings(count=5, seed=2, steps=3, cfg=4.0, height=32, width=32, batch_size=5)
    return generate_proposals(tiny_sdxl_backend, "a photo of a blob", "", settings, feature_point="mid_block")


def test_features_are_the_mid_block_input_of_the_conditional_branch(tiny_sdxl_backend, proposals):
    assert proposals.features.shape == (5, 64, 4, 4)  # tiny UNet: 64 channels at 4×4 before the mid block
    assert not torch.equal(proposals.features[0], proposals.features[1])


def test_projector_is_sized_from_the_features():
    assert Projector(1280, 32, 32, 2048)(torch.randn(2, 1280, 32, 32)).shape == (2, 2048)
    small = Projector(64, 4, 4, 96)
    assert small(torch.randn(3, 64, 4, 4)).shape == (3, 96)
    with pytest.raises(ProtagonistError, match=r"\(64, 8, 8\).*\(64, 4, 4\)"):
        small(torch.randn(1, 64, 8, 8))


def test_tuning_objective_falls_and_only_the_projector_learns(tiny_sdxl_backend, proposals):
    from protagonist.core.oneactor.tuning import _step_losses, _Tuning, new_projector

    backend = tiny_sdxl_backend
    data = ProposalSet.from_proposals(proposals, target=2, image_size=(32, 32))
    assert torch.equal(data.latents[0], proposals.latents[2])
    weights = {k: v.clone() for k, v in backend.denoiser.state_dict().items()}
    with torch.no_grad():
        conds = [[backend.encode_prompts(["a photo of a blob"], word="blob", image_size=(32, 32))] * 5]
    projector = new_projector(backend, data.features, 0)
    optimizer = torch.optim.AdamW(projector.parameters(), lr=1e-2)
    tuning = _Tuning(data, conds, projector, torch.Generator())
    assert (tuning.proposals, tuning.views) == (5, 1)
    settings = OneActorTuning(aux_per_batch=2)
    losses = []
    for _ in range(6):  # one fixed draw of auxiliaries, timesteps and noise
        tuning.generator.manual_seed(7)
        loss, = _step_losses(backend, [tuning], "blob", settings)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(torch.equal(v, weights[k]) for k, v in backend.denoiser.state_dict().items())
    tuned = tune_projector(backend, data, "blob", OneActorTuning(steps=5, aux_per_batch=2))
    assert len(tuned.losses) == 5 and not tuned.projector.training


def test_scenes_follow_their_proposals_into_the_tuning_captions(tiny_sdxl_backend, proposals, monkeypatch):
    scenes = ["on a beach", "in a forest", "at night", "in the snow", ""]
    data = ProposalSet.from_proposals(proposals, target=2, image_size=(32, 32), scenes=scenes)
    assert data.scenes == ["at night", "on a beach", "in a forest", "in the snow", ""]
    assert data.captions("a photo of a {}", "blob") == [
        "a photo of a blob at night", "a photo of a blob on a beach", "a photo of a blob in a forest",
        "a photo of a blob in the snow", "a photo of a blob"]
    encoded = []
    original = type(tiny_sdxl_backend).encode_prompts

    def spy(self, prompts, *args, **kwargs):
        encoded.extend(prompts)
        return original(self, prompts, *args, **kwargs)

    monkeypatch.setattr(type(tiny_sdxl_backend), "encode_prompts", spy)
    tune_projector(tiny_sdxl_backend, data, "blob", OneActorTuning(steps=1, aux_per_batch=2, templates=("a {}",)))
    assert [p for p in encoded if p] == data.captions("a {}", "blob")  # "" sizes the projector
    encoded.clear()
    tune_projector(tiny_sdxl_backend, ProposalSet.from_proposals(proposals, target=2, image_size=(32, 32)), "blob",
                   OneActorTuning(steps=1, aux_per_batch=2, templates=("a {}", "a photo of a {}")))
    assert sorted(p for p in encoded if p) == ["a blob", "a photo of a blob"]  # once each, not per proposal
    with pytest.raises(ProtagonistError, match="2 scenes for 5 proposals"):
        ProposalSet.from_proposals(proposals, target=0, image_size=(32, 32), scenes=["a", "b"])


def test_target_index_out_of_range_names_the_range(proposals):
    with pytest.raises(ProtagonistError, match="out of range.*0–4"):
        ProposalSet.from_proposals(proposals, target=5, image_size=(32, 32))


def test_guidance_rule_matches_a_hand_computation_with_a_live_aux_term(tiny_sdxl_backend):
    settings = ClusterGuidance(eta_target=7.0, eta_aux=1.5, cluster_fraction=0.5, cfg=3.0)
    width = tiny_sdxl_backend.encode_prompts([""]).embeds.shape[-1]
    conds, guidance = cluster_guided_terms(tiny_sdxl_backend, ["a photo of a blob"], "", "blob", torch.ones(width),
                                           -torch.ones(width), settings, (32, 32))
    early, late = StepInfo(0, 10, 1.0, torch.zeros(11)), StepInfo(6, 10, 1.0, torch.zeros(11))
    assert len(conds(early)) == 3 and len(conds(late)) == 2
    e0, et, ea = torch.tensor([1.0]), torch.tensor([3.0]), torch.tensor([2.0])
    assert guidance(torch.stack([e0, et, ea]), early).item() == pytest.approx(1 + 7 * 2 - 1.5 * 1)
    assert guidance(torch.stack([e0, et]), late).item() == pytest.approx(1 + 3 * 2)
    target, aux = conds(early)[1], conds(early)[2]
    base = tiny_sdxl_backend.encode_prompts(["a photo of a blob"], word="blob", image_size=(32, 32))
    changed = (target.embeds - base.embeds).abs().sum(-1)[0].nonzero().flatten().tolist()
    assert changed == base.word_positions[0]
    assert torch.allclose((target.embeds - base.embeds)[0, changed[0]], torch.full((width,), 0.8))
    assert torch.allclose((aux.embeds - base.embeds)[0, changed[0]], -torch.ones(width))


def test_eta_aux_zero_evaluates_only_two_terms(tiny_sdxl_backend):
    width = tiny_sdxl_backend.encode_prompts([""]).embeds.shape[-1]
    conds, _ = cluster_guided_terms(tiny_sdxl_backend, ["a blob"], "", "blob", torch.zeros(width), torch.zeros(width),
                                    ClusterGuidance(eta_aux=0.0), (32, 32))
    assert len(conds(StepInfo(0, 10, 1.0, torch.zeros(11)))) == 2


def test_a_sample_alone_equals_the_same_sample_in_a_batch(tiny_sdxl_backend, proposals, tmp_path):
    data = ProposalSet.from_proposals(proposals, target=0, image_size=(32, 32))
    tuned = tune_projector(tiny_sdxl_backend, data, "blob", OneActorTuning(steps=3))
    identity = make_identity(tuned.projector, data.features, "blob", "sdxl")
    reloaded = load_identity(save_identity(identity, tmp_path / "id.safetensors"), tiny_sdxl_backend)
    assert torch.equal(reloaded.delta_target, identity.delta_target)
    results = []
    for prompts, seeds in ((["a blob in the snow"], [9]), (["a blob in the snow", "a blob at night"], [9, 4])):
        conds, guidance = cluster_guided_terms(tiny_sdxl_backend, prompts, "", "blob", reloaded.delta_target,
                                               reloaded.delta_aux, ClusterGuidance(), (32, 32))
        noise = seeded_noise(seeds, tiny_sdxl_backend.latent_shape(len(seeds), 32, 32))
        results.append(sample(tiny_sdxl_backend, conds, noise, 3, guidance))
    # Only float noise of different batch sizes remains (a train-mode BatchNorm would change the offsets).
    assert (results[0][0] - results[1][0]).abs().max() < 1e-3


def test_identity_from_another_model_is_refused(tiny_sdxl_backend, tiny_flux_backend, proposals, tmp_path):
    data = ProposalSet.from_proposals(proposals, target=0, image_size=(32, 32))
    identity = make_identity(tune_projector(tiny_sdxl_backend, data, "blob", OneActorTuning(steps=1)).projector,
                             data.features, "blob", "sdxl")
    path = save_identity(identity, tmp_path / "id.safetensors")
    with pytest.raises(ProtagonistError, match="tuned on a sdxl model"):
        load_identity(path, tiny_flux_backend)


def test_base_word_missing_from_the_prompt_lists_its_words(tiny_sdxl_backend):
    with pytest.raises(ProtagonistError, match=r"'cat' does not occur.*'beach', 'blob'"):
        width = tiny_sdxl_backend.encode_prompts([""]).embeds.shape[-1]
        cluster_guided_terms(tiny_sdxl_backend, ["a blob on the beach"], "", "cat", torch.zeros(width),
                             torch.zeros(width), ClusterGuidance(), (32, 32))


def test_zero_loss_weights_skip_their_denoiser_passes(tiny_sdxl_backend, proposals):
    data = ProposalSet.from_proposals(proposals, target=0, image_size=(32, 32))
    rows = []
    handle = tiny_sdxl_backend.denoiser.register_forward_pre_hook(
        lambda module, args, kwargs: rows.append(args[0].shape[0] if args else kwargs["sample"].shape[0]),
        with_kwargs=True)
    try:
        tune_projector(tiny_sdxl_backend, data, "blob", OneActorTuning(steps=2, aux_per_batch=3))
        paper = list(rows)
        rows.clear()
        tuned = tune_projector(tiny_sdxl_backend, data, "blob",
                               OneActorTuning(steps=2, aux_per_batch=3, lambda_aux=0.0, lambda_aver=0.0))
        rows_target_only = list(rows)
        rows.clear()
        tune_projector(tiny_sdxl_backend, data, "blob", OneActorTuning(steps=2, aux_per_batch=3, lambda_aux=0.0))
    finally:
        handle.remove()
    assert paper == [5, 5]  # target + 3 auxiliaries + the average condition
    assert rows_target_only == [1, 1]
    assert rows == [2, 2]  # target + the average condition
    assert tuned.losses[0] > 0


def test_loss_weights_are_the_papers_objective():
    from protagonist.core.oneactor.tuning import loss_weights

    weights = loss_weights(OneActorTuning(lambda_aux=0.5, lambda_aver=0.3), aux_count=2)
    assert torch.allclose(weights, torch.tensor([1.0, 0.25, 0.25, 0.3]))


def test_mirrored_captions_swap_left_and_right_only_as_whole_words():
    from protagonist.core.oneactor.tuning import mirrored_text

    assert mirrored_text("a blob in a forest, on the left") == "a blob in a forest, on the right"
    assert mirrored_text("on the right; leftover bright") == "on the left; leftover bright"


def record_tuning_inputs(backend, monkeypatch) -> tuple[list, list]:
    """Lists that fill, while tuning runs, with each denoiser call's latents and each prompt encoded."""
    import protagonist.core.oneactor.tuning as tuning

    fed, encoded = [], []
    real_error, real_encode = tuning.error_at, backend.encode_prompts
    monkeypatch.setattr(tuning, "error_at", lambda model, latents, *a, **k: (
        fed.append(latents.clone()), real_error(model, latents, *a, **k))[1])
    monkeypatch.setattr(backend, "encode_prompts",
                        lambda prompts, **k: (encoded.extend(prompts), real_encode(prompts, **k))[1])
    return fed, encoded


def test_the_target_comes_as_itself_and_its_mirror_image(tiny_sdxl_backend, proposals, monkeypatch):
    data = ProposalSet.from_proposals(proposals, target=1, image_size=(32, 32),
                                      scenes=["at night, on the right", "on a beach, on the left"] + ["at night"] * 3)
    mirrored = data.with_mirrored_target(tiny_sdxl_backend)
    assert mirrored.target_views == 1 and mirrored.proposals == 5 and mirrored.latents.shape[0] == 6
    assert mirrored.scenes[-1] == "on a beach, on the right"
    with torch.no_grad():  # the tiny VAE is random, so the mirror is checked against its definition
        mirror = tiny_sdxl_backend.encode_images(tiny_sdxl_backend.decode_latents(proposals.latents[1:2]).flip(-1))
    assert torch.allclose(mirrored.latents[-1:], mirror) and torch.equal(mirrored.latents[:5], data.latents)

    fed, encoded = record_tuning_inputs(tiny_sdxl_backend, monkeypatch)
    tune_projector(tiny_sdxl_backend, data, "blob", OneActorTuning(steps=12, lambda_aux=0.0, lambda_aver=0.0,
                                                                   templates=("a {}",)))
    targets = [rows[0] for rows in fed]
    assert any(torch.equal(t, mirrored.latents[0]) for t in targets)
    assert any(torch.equal(t, mirrored.latents[-1]) for t in targets)
    assert "a blob on a beach, on the right" in encoded and "a blob on a beach, on the left" in encoded
    fed.clear()
    tune_projector(tiny_sdxl_backend, data, "blob", OneActorTuning(steps=4, lambda_aux=0.0, lambda_aver=0.0,
                                                                   mirror_target=False))
    assert all(torch.equal(rows[0], mirrored.latents[0]) for rows in fed)


def test_further_target_views_are_tuned_on_with_their_scenes_and_never_as_auxiliaries(
        tiny_sdxl_backend, proposals, monkeypatch):
    data = ProposalSet.from_proposals(proposals, target=0, image_size=(32, 32), scenes=["at night"] * 5)
    views = torch.randn(2, *proposals.latents.shape[1:]) * 7  # recognisable rows
    more = data.with_target_views(views, ["in the snow", "in a city"])
    assert more.proposals == 5 and more.target_views == 2 and more.scenes[-2:] == ["in the snow", "in a city"]
    assert data.with_target_views(views).scenes[-1] == "at night"  # the target's scene by default
    fed, encoded = record_tuning_inputs(tiny_sdxl_backend, monkeypatch)
    tune_projector(tiny_sdxl_backend, more, "blob", OneActorTuning(steps=16, aux_per_batch=2, lambda_aux=0.5,
                                                                   lambda_aver=0.0, templates=("a {}",)))
    is_view = lambda row: any(torch.equal(row, v) for v in views)
    assert any(is_view(rows[0]) for rows in fed)  # some steps' target is one of the views
    assert not any(is_view(row) for rows in fed for row in rows[1:])  # auxiliaries are proposals only
    assert "a blob in the snow" in encoded and "a blob in a city" in encoded
    with pytest.raises(ProtagonistError, match="one per view"):
        data.with_target_views(views, ["in the snow"])
    with pytest.raises(ProtagonistError, match="proposals' size"):
        data.with_target_views(torch.zeros(1, *proposals.latents.shape[1:-1], proposals.latents.shape[-1] + 1))


def test_tuning_continues_from_given_projectors_and_leaves_them_unchanged(tiny_sdxl_backend, proposals):
    data = ProposalSet.from_proposals(proposals, target=2, image_size=(32, 32))
    settings = OneActorTuning(steps=3, lr=1e-2, templates=("a {}",), lambda_aux=0.0, lambda_aver=0.0)
    first = tune_projector(tiny_sdxl_backend, data, "blob", settings).projector
    before = {k: v.clone() for k, v in first.state_dict().items()}
    again = tune_projectors(tiny_sdxl_backend, [data], "blob", settings, projectors=[first])[0]
    fresh = tune_projector(tiny_sdxl_backend, data, "blob", settings)
    assert all(torch.equal(before[k], v) for k, v in first.state_dict().items())
    with torch.no_grad():
        offsets = [p.eval()(data.features) for p in (first, again.projector, fresh.projector)]
    assert not torch.allclose(offsets[1], offsets[0]) and not torch.allclose(offsets[1], offsets[2])
    assert again.losses[0] != pytest.approx(fresh.losses[0])  # same batch and noise, another starting projector
    with pytest.raises(ProtagonistError, match="one per set"):
        tune_projectors(tiny_sdxl_backend, [data], "blob", settings, projectors=[first, first])


def test_projectors_tuned_side_by_side_equal_each_tuned_alone(tiny_sdxl_backend, proposals):
    sets = [ProposalSet.from_proposals(proposals, target=t, image_size=(32, 32)) for t in (0, 3)]
    settings = OneActorTuning(steps=4, aux_per_batch=2, lr=1e-2, templates=("a {}",))
    together = tune_projectors(tiny_sdxl_backend, sets, "blob", settings)
    for data, tuned in zip(sets, together):
        alone = tune_projector(tiny_sdxl_backend, data, "blob", settings)
        assert tuned.losses == pytest.approx(alone.losses, rel=1e-4)
        with torch.no_grad():
            assert torch.allclose(tuned.projector(data.features), alone.projector(data.features), atol=1e-5)
    with torch.no_grad():
        assert not torch.allclose(together[0].projector(sets[0].features), together[1].projector(sets[0].features))
    with pytest.raises(ProtagonistError, match="no proposal sets to tune"):
        tune_projectors(tiny_sdxl_backend, [], "blob", settings)


def test_an_identity_continues_only_on_features_of_its_shape_and_for_its_base_word():
    from protagonist.core.oneactor.identity import check_continuable

    features = torch.randn(3, 8, 4, 4)
    identity = make_identity(Projector(8, 4, 4, 16), features, "blob", "sdxl")
    check_continuable(identity, features, "blob")
    with pytest.raises(ProtagonistError, match=r"\(8, 4, 4\), these proposals' features are \(8, 2, 2\)"):
        check_continuable(identity, torch.randn(3, 8, 2, 2), "blob")
    with pytest.raises(ProtagonistError, match="base word 'blob', not 'man'"):
        check_continuable(identity, features, "man")


def test_flux_features_are_the_last_double_block_image_tokens_on_the_latent_grid(tiny_flux_backend):
    """FLUX (experimental): the proposals carry the last double-stream block's input image tokens as a grid; a
    projector tunes on them and its offset steers the cluster-guided sampler."""
    backend = tiny_flux_backend
    point = backend.oneactor_feature_point
    assert point == f"double_blocks.{len(backend.transformer.transformer_blocks) - 1}"
    captured = []
    hook = backend.feature_module(point).register_forward_pre_hook(
        lambda module, args, kwargs: captured.append(kwargs["hidden_states"].detach().clone()), with_kwargs=True)
    settings = ProposalSettings(count=3, seed=2, steps=2, cfg=4.0, height=32, width=32, batch_size=3)
    try:
        proposals = generate_proposals(backend, "a photo of a blob", "", settings, feature_point=point)
    finally:
        hook.remove()
    h, w = backend.latent_shape(1, 32, 32)[-2:]
    tokens = captured[-1][3:]  # the last step's conditional half (the batch is [negative ×3, positive ×3])
    assert proposals.features.shape == (3, tokens.shape[-1], h // 2, w // 2)
    assert torch.equal(proposals.features[1, :, 0, 1], tokens[1, 1])  # token 1 is row 0, column 1
    data = ProposalSet.from_proposals(proposals, target=0, image_size=(32, 32))
    tuned = tune_projector(backend, data, "blob", OneActorTuning(steps=4, aux_per_batch=2, lr=1e-2))
    assert all(torch.isfinite(torch.tensor(tuned.losses)))
    identity = make_identity(tuned.projector, data.features, "blob", "flux")
    assert identity.delta_target.shape == (backend.encode_prompts([""]).embeds.shape[-1],)
    drawn = []
    for offset in (identity.delta_target, torch.zeros_like(identity.delta_target)):
        conds, guidance = cluster_guided_terms(backend, ["a blob in the snow"], "", "blob", offset, identity.delta_aux,
                                               ClusterGuidance(), (32, 32))
        drawn.append(sample(backend, conds, seeded_noise([9], backend.latent_shape(1, 32, 32)), 2, guidance))
    assert torch.isfinite(drawn[0]).all() and not torch.allclose(drawn[0], drawn[1])
    with pytest.raises(ValueError, match="image tokens"):
        backend.feature_grid(torch.zeros(1, 5, 8), (h, w))
