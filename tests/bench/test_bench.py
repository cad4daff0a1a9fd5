"""The benchmark's scoring on images whose answers are known, and its cost accounting."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from protagonist.bench.cost import measure
from protagonist.bench.harness import (Character, MethodRun, PlainSampling, SamplingSettings, draw, read_characters,
                                       run_method, same_character_pairs)
from protagonist.bench.report import ratio_to_plain
from protagonist.bench.scoring import score
from protagonist.sprites.attributes import IDENTITY_ATTRIBUTES, Context, Identity
from protagonist.sprites.captions import parse_prompt
from protagonist.sprites.oracle import Oracle
from protagonist.sprites.world import render

CONTEXTS = ["on a beach, on the left", "in a forest, in the center", "at night, on the right"]


@pytest.fixture(scope="module")
def oracle():
    return Oracle.load()


def _render_run(identities_per_character: list[list[Identity]], subject: str = "a blob") -> MethodRun:
    rng = np.random.default_rng(0)
    images, prompts, owners = [], [], []
    for c, identities in enumerate(identities_per_character):
        for identity, context_text in zip(identities, CONTEXTS):
            prompt = f"{subject} {context_text}"
            parsed = parse_prompt(prompt)
            images.append(render(identity, Context(parsed["background"], parsed["position"]), rng))
            prompts.append(prompt)
            owners.append(c)
    return MethodRun("test", torch.stack(images), prompts, owners)


def test_one_identity_per_character_scores_full_consistency_and_conformity(oracle):
    run = _render_run([[Identity.from_index(7)] * 3, [Identity.from_index(900)] * 3])
    scores = score(run, oracle)
    assert scores.identity_consistency == 1.0
    assert scores.prompt_conformity == 1.0 and scores.validity == 1.0
    assert set(scores.attribute_consistency.values()) == {1.0}


def test_unreadable_names_the_attribute_that_cost_each_image_its_validity(oracle):
    from dataclasses import replace as replace_field

    from protagonist.bench.report import COLUMNS, table_row

    class PatternBlindOracle:  # the real reading, with image 1's pattern confidence at the threshold
        def read(self, images):
            reading = oracle.read(images)
            confidences = dict(reading.confidences, pattern=reading.confidences["pattern"].clone())
            confidences["pattern"][1] = reading.threshold
            return replace_field(reading, confidences=confidences, valid=reading.valid & (torch.arange(4) != 1))

    run = _render_run([[Identity.from_index(7)] * 2, [Identity.from_index(900)] * 2])
    scores = score(run, PatternBlindOracle())
    assert scores.validity == 0.75
    assert scores.unreadable == {**{a: 0.0 for a in scores.unreadable}, "pattern": 0.25}
    assert list(scores.unreadable) == [*IDENTITY_ATTRIBUTES, "background", "position"]
    row = dict(zip(COLUMNS, table_row(run, scores)))
    assert row[COLUMNS[-1]] == "0.0% 0.0% 25.0% 0.0% 0.0% 0.0% 0.0%"


def test_different_identities_score_zero_consistency(oracle):
    run = _render_run([[Identity.from_index(i) for i in (1, 2, 3)]])
    scores = score(run, oracle)
    assert scores.identity_consistency == 0.0
    assert scores.attribute_consistency["shape"] == 1.0 and scores.attribute_consistency["accessory"] < 1.0


def test_subject_conformity_checks_named_attributes(oracle):
    red = Identity.from_index(0)
    assert red.color == 0
    run = _render_run([[red] * 3], subject="a blue blob")
    assert score(run, oracle).subject_conformity == 0.0
    run = _render_run([[red] * 3], subject="a red blob")
    assert score(run, oracle).subject_conformity == 1.0


def test_pairs_stay_within_characters():
    assert list(same_character_pairs([0, 0, 1, 1, 1])) == [(0, 1), (2, 3), (2, 4), (3, 4)]


def test_cost_counts_images_per_forward():
    net = torch.nn.Linear(3, 3)
    with measure(net) as cost:
        net(torch.zeros(4, 3))
        net(torch.zeros(2, 3))
    assert cost.evaluations == 6 and cost.seconds >= 0


def test_shipped_prompt_file_has_twenty_characters_with_five_contexts():
    from protagonist.bench.cli import DEFAULT_PROMPTS

    characters = read_characters(DEFAULT_PROMPTS)
    assert len(characters) >= 20 and all(len(c.contexts) == 5 for c in characters)
    for character in characters:
        for prompt in character.prompts:
            parsed = parse_prompt(prompt)
            assert "background" in parsed and "position" in parsed, prompt


def test_prompt_file_errors_name_the_line(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text("a blob\n")
    with pytest.raises(ValueError, match="a blob"):
        read_characters(path)
    assert Character("a blob", ["x"]).prompts == ["a blob x"]


def test_grid_scoring_on_rendered_grids(oracle):
    from protagonist.bench.grids import grid_prompts, score_grids
    from protagonist.sprites.world import render_grid

    prompts, contexts = grid_prompts(4, seed=3)
    rng = np.random.default_rng(0)
    same = torch.stack([render_grid(Identity.from_index(5), c, rng) for c in contexts])
    scores = score_grids(same, contexts, oracle)
    assert scores.consistent == 1.0 and scores.panel_conformity == 1.0 and scores.panel_validity == 1.0
    mixed = same.clone()
    mixed[:, :, :32, :32] = torch.stack([render_grid(Identity.from_index(700), c, rng) for c in contexts])[:, :, :32, :32]
    mixed_scores = score_grids(mixed, contexts, oracle)
    assert mixed_scores.consistent == 0.0
    assert scores.panel_agreement == dict.fromkeys(IDENTITY_ATTRIBUTES, 1.0)
    first, stranger = Identity.from_index(5), Identity.from_index(700)
    assert mixed_scores.panel_agreement == {name: float(getattr(first, name) == getattr(stranger, name))
                                            for name in IDENTITY_ATTRIBUTES}
    assert all("2x2 grid" in p for p in prompts)


def test_an_unreadable_image_costs_its_pairs_but_not_the_readable_pairs_consistency(oracle):
    run = _render_run([[Identity.from_index(7)] * 3])
    run.images[1] = 0.5  # a grey square: nothing to read
    scores = score(run, oracle)
    assert scores.validity == pytest.approx(2 / 3)
    assert scores.identity_consistency == pytest.approx(1 / 3)  # only the pair (0, 2) counts
    assert scores.readable_pair_consistency == 1.0
    assert scores.identities[1] is None and scores.identities[0] == scores.identities[2]
    assert set(scores.identities[0]) == {"shape", "color", "pattern", "eyes", "accessory"}


class _TwiceCFG:
    """A method whose images cost exactly two plain CFG draws."""

    name = "twice"

    def prepare(self, backend, character, seed):
        return None

    def generate(self, backend, state, prompts, seeds, settings):
        draw(backend, prompts, seeds, settings)
        return draw(backend, prompts, seeds, settings)


def test_each_method_is_costed_against_plain_cfg_drawn_beside_it(tiny_sdxl_backend):
    characters = [Character("a blob", ["on a beach", "at night"]), Character("a cat", ["in a forest"])]
    settings = SamplingSettings(steps=2, cfg=3.0, size=(32, 32))
    twice = run_method(_TwiceCFG(), tiny_sdxl_backend, characters, 7, settings)
    plain = run_method(PlainSampling(), tiny_sdxl_backend, characters, 7, settings)
    assert plain.plain_beside is None and ratio_to_plain(plain) == "—"
    assert twice.plain_beside.evaluations == plain.generation.evaluations == 3 * 2 * 2
    assert twice.generation.evaluations == 2 * twice.plain_beside.evaluations
    assert ratio_to_plain(twice).startswith("2.00× / ")
    assert torch.equal(twice.images, plain.images)  # the draws beside change no image


def test_draw_samples_at_the_settings_shift(tiny_flux_backend):
    settings = SamplingSettings(steps=3, cfg=2.0, size=(32, 32))
    own = draw(tiny_flux_backend, ["a blob"], [4], settings)
    at_own_shift = draw(tiny_flux_backend, ["a blob"], [4], replace(settings, shift=tiny_flux_backend.schedule.shift))
    higher = draw(tiny_flux_backend, ["a blob"], [4], replace(settings, shift=8.0))
    assert torch.allclose(own, at_own_shift, atol=1e-6)
    assert (own - higher).abs().max() > 1e-3


def test_grid_report_samples_the_grids_at_grid_cfg_and_shift(oracle, monkeypatch, tmp_path):
    from protagonist.bench import cli, grids
    from protagonist.sprites.world import render_grid

    used = []

    def rendered_grids(backend, count, seed, settings):
        used.append(settings)
        prompts, contexts = grids.grid_prompts(count, seed)
        rng = np.random.default_rng(0)
        return torch.stack([render_grid(Identity.from_index(5), c, rng) for c in contexts]), prompts, contexts

    monkeypatch.setattr(grids, "run_grids", rendered_grids)
    monkeypatch.setattr(grids, "panel_reliance", lambda backend: {0.9: 1.0})
    settings = SamplingSettings(steps=30, cfg=3.0, sampler="euler")
    for flags, cfg, shift, said in (([], 3.0, None, "CFG 3"), (["--grid-cfg", "1.5"], 1.5, None, "CFG 1.5"),
                                    (["--grid-shift", "6"], 3.0, 6.0, "CFG 3, flow shift 6")):
        args = cli.build_parser().parse_args(["--grids", "2", *flags])
        report = cli.grid_report(None, args, settings, oracle, tmp_path)
        assert (used[-1].cfg, used[-1].shift, used[-1].steps) == (cfg, shift, 30)
        assert f"grid prompts: 2 at {said}; one identity in all four panels: 100.0%" in report
    assert settings.cfg == 3.0 and settings.shift is None
