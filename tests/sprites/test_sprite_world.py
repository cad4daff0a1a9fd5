"""Sprite world: identities, rendering, captions, parsing, grids, datasets."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest
import torch
from protagonist.sprites import world
from protagonist.sprites.attributes import PRENOMINAL_WORDS
from protagonist.sprites.captions import MENTION_PROBABILITY, random_mention
from protagonist.sprites.world import (
    ATTRIBUTES,
    CONTEXT_ATTRIBUTES,
    IDENTITY_ATTRIBUTES,
    VOCABULARY,
    Context,
    Identity,
    caption,
    grid_caption,
    labels_to_tensor,
    make_dataset,
    parse_prompt,
    random_caption,
    render,
    render_batch,
    render_grid,
    render_grid_with_mask,
    render_with_mask,
    split_grid,
)


def test_identity_count_and_index_round_trip():
    assert world.N_IDENTITIES == 4 * 8 * 4 * 3 * 3 == 1152
    assert world.N_CONTEXTS == 6 * 3
    seen = set()
    for i in range(world.N_IDENTITIES):
        ident = Identity.from_index(i)
        assert ident.index == i
        seen.add(ident.codes())
    assert len(seen) == world.N_IDENTITIES
    assert all(Context.from_index(i).index == i for i in range(world.N_CONTEXTS))


def test_records_accept_names_and_reject_bad_values():
    ident = Identity(shape="square", color="blue", pattern="dots", eyes="one", accessory="bow")
    assert ident == Identity(1, 5, 2, 1, 2)
    assert ident.names()["color"] == "blue" and ident.words()["accessory"] == "a bow"
    assert Context(background="night", position="right") == Context(3, 2)
    with pytest.raises(ValueError):
        Identity(shape="blob", color=0, pattern=0, eyes=0, accessory=0)
    with pytest.raises(ValueError):
        Context(background=6, position=0)
    with pytest.raises(ValueError):
        Identity.from_index(world.N_IDENTITIES)


def test_render_shape_range_and_determinism():
    ident, ctx = Identity.from_index(777), Context.from_index(5)
    for seed in range(5):
        a = render(ident, ctx, np.random.default_rng(seed))
        b = render(ident, ctx, seed)
        assert a.shape == (3, 32, 32) and a.dtype == torch.float32
        assert 0.0 <= a.min().item() and a.max().item() <= 1.0
        assert torch.equal(a, b)
    jittered = {render(ident, ctx, seed).numpy().tobytes() for seed in range(20)}
    assert len(jittered) > 5, "jitter should make (identity, context) more than one image"


def test_every_identity_and_context_renders_differently():
    ctx = Context(background="beach", position="center")
    images = {render(Identity.from_index(i), ctx, 0).numpy().tobytes() for i in range(world.N_IDENTITIES)}
    assert len(images) == world.N_IDENTITIES
    ident = Identity.from_index(0)
    images = {render(ident, Context.from_index(c), 0).numpy().tobytes() for c in range(world.N_CONTEXTS)}
    assert len(images) == world.N_CONTEXTS


@pytest.mark.parametrize("attr", IDENTITY_ATTRIBUTES)
def test_single_attribute_change_changes_many_pixels(attr):
    rng = np.random.default_rng(1)
    for _ in range(60):
        ident, ctx = Identity.random(rng), Context.random(rng)
        codes = ident.names()
        codes[attr] = ATTRIBUTES[attr][(getattr(ident, attr) + 1) % len(ATTRIBUTES[attr])]
        a, b = render(ident, ctx, 3), render(Identity(**codes), ctx, 3)
        changed = (a - b).abs().amax(0) > 0.1
        assert changed.sum().item() >= 4, (attr, ident, ctx)


def test_render_batch_matches_sequential_renders():
    idents = [Identity.from_index(i) for i in (0, 100, 1151)]
    ctxs = [Context.from_index(i) for i in (0, 7, 17)]
    batch = render_batch(idents, ctxs, 9)
    rng = np.random.default_rng(9)
    assert torch.equal(batch, torch.stack([render(i, c, rng) for i, c in zip(idents, ctxs)]))


def test_grid_panels_equal_renders_with_same_rng_state():
    ident = Identity.from_index(321)
    ctxs = [Context.from_index(i) for i in (0, 5, 10, 17)]
    grid = render_grid(ident, ctxs, np.random.default_rng(4))
    assert grid.shape == (3, 64, 64)
    rng = np.random.default_rng(4)
    panels = [render(ident, c, rng) for c in ctxs]
    assert torch.equal(grid[:, :32, :32], panels[0]) and torch.equal(grid[:, :32, 32:], panels[1])
    assert torch.equal(grid[:, 32:, :32], panels[2]) and torch.equal(grid[:, 32:, 32:], panels[3])
    assert torch.equal(split_grid(grid), torch.stack(panels))
    assert split_grid(grid.unsqueeze(0).repeat(2, 1, 1, 1)).shape == (2, 4, 3, 32, 32)


def test_masks_cover_exactly_the_pixels_a_character_changes():
    ident, ctx = Identity.from_index(77), Context.from_index(3)
    image, mask = render_with_mask(ident, ctx, np.random.default_rng(2))
    assert torch.equal(image, render(ident, ctx, np.random.default_rng(2)))
    other, other_mask = render_with_mask(Identity.from_index(900), ctx, np.random.default_rng(2))
    background = (mask == 0) & (other_mask == 0)
    assert torch.equal(image[:, background[0]], other[:, background[0]])  # outside both characters: same scene
    assert 0.05 < mask.mean() < 0.5
    ctxs = [Context.from_index(i) for i in (0, 5, 10, 17)]
    grid, grid_mask = render_grid_with_mask(ident, ctxs, np.random.default_rng(4))
    assert torch.equal(grid, render_grid(ident, ctxs, np.random.default_rng(4)))
    assert grid_mask.shape == (1, 64, 64) and all(panel.sum() > 0 for panel in split_grid(grid_mask.expand(3, -1, -1)))


def test_captions_examples():
    ident = Identity(shape="round", color="red", pattern="stripes", eyes="two", accessory="hat")
    assert caption(ident, Context("beach", "left")) == "a blob on a beach, on the left"
    assert (caption(ident, Context("forest", "right"), ("color", "pattern", "accessory"))
            == "a red striped blob with a hat in a forest, on the right")
    assert (caption(ident, Context("forest", "right"), IDENTITY_ATTRIBUTES, prenominal=True)
            == "a two eyed hatted round red striped blob in a forest, on the right")
    assert (grid_caption(ident, [Context("beach", "left"), Context("forest", "right"),
                                 Context("night", "center"), Context("city", "left")])
            == "a 2x2 grid of the same blob: on a beach, on the left; in a forest, on the right; "
               "at night, in the center; in a city, on the left")


def test_parse_prompt_round_trip_over_random_captions():
    rng = np.random.default_rng(0)
    for _ in range(1500):
        ident, ctx = Identity.random(rng), Context.random(rng)
        mention = random_mention(rng)
        parsed = parse_prompt(caption(ident, ctx, mention, prenominal=bool(rng.integers(2))))
        expected = {**{a: ident.names()[a] for a in mention}, **ctx.names()}
        assert parsed == expected
    assert parse_prompt("A Blob  at NIGHT,   on the Right!") == {"background": "night", "position": "right"}


def test_parse_grid_prompt_round_trip():
    rng = np.random.default_rng(1)
    for _ in range(300):
        ident = Identity.random(rng)
        ctxs = [Context.random(rng) for _ in range(4)]
        mention = random_mention(rng)
        parsed = parse_prompt(grid_caption(ident, ctxs, mention, prenominal=bool(rng.integers(2))))
        assert parsed.pop("grid") is True
        assert parsed.pop("panels") == [c.names() for c in ctxs]
        assert parsed == {a: ident.names()[a] for a in mention}


def test_random_caption_mentions_identity_at_the_set_rate():
    rng = np.random.default_rng(2)
    mentions = [random_mention(rng) for _ in range(2000)]
    frac = sum(1 for m in mentions if m) / len(mentions)
    assert abs(frac - MENTION_PROBABILITY) < 0.05
    assert max(len(m) for m in mentions) == 5
    assert {a for m in mentions for a in m} == set(IDENTITY_ATTRIBUTES)
    assert random_caption(Identity.from_index(3), Context.from_index(3), np.random.default_rng(5)).endswith(
        Context.from_index(3).words()["position"])


@pytest.mark.parametrize("rate", [0.0, 0.8, 1.0])
def test_prenominal_rate_sets_where_eyes_and_accessory_are_named(rate):
    rng = np.random.default_rng(7)
    captions = [random_caption(Identity.random(rng), Context.random(rng), rng, prenominal_rate=rate)
                for _ in range(1500)]
    naming = [c for c in captions if " with " in c or any(
        w in c for words in PRENOMINAL_WORDS.values() for w in words)]
    after = sum(" with " in c for c in naming) / len(naming)
    assert abs(after - (1 - rate)) < 0.04


def test_vocabulary_covers_every_caption_word():
    assert VOCABULARY == sorted(set(VOCABULARY))
    assert all(re.fullmatch(r"[a-z0-9]+", w) for w in VOCABULARY)
    vocab = set(VOCABULARY)
    used = set()
    all_mentions = [(), tuple(IDENTITY_ATTRIBUTES)]
    for i, c in itertools.product(range(world.N_IDENTITIES), range(world.N_CONTEXTS)):
        text = caption(Identity.from_index(i), Context.from_index(c), all_mentions[(i + c) % 2], prenominal=c % 3 == 0)
        assert re.fullmatch(r"[a-z0-9 ,]+", text)
        used.update(world.tokenize(text))
    grid = grid_caption(Identity.from_index(5), [Context.from_index(k) for k in range(4)], IDENTITY_ATTRIBUTES)
    assert re.fullmatch(r"[a-z0-9 ,:;]+", grid)
    used.update(world.tokenize(grid))
    assert used <= vocab
    assert used == vocab, f"unused vocabulary words: {sorted(vocab - used)}"


def test_make_dataset_is_deterministic_and_consistent():
    images, captions, labels = make_dataset(40, seed=3)
    again = make_dataset(40, seed=3)
    assert images.shape == (40, 3, 32, 32)
    assert torch.equal(images, again[0]) and captions == again[1] and labels == again[2]
    assert not torch.equal(images, make_dataset(40, seed=4)[0])
    table = labels_to_tensor(labels)
    assert table.shape == (40, 7)
    for cap, label, row in zip(captions, labels, table):
        parsed = parse_prompt(cap)
        assert {a: parsed[a] for a in CONTEXT_ATTRIBUTES} == label.contexts[0].names()
        assert all(parsed[a] == label.identity.names()[a] for a in parsed if a in IDENTITY_ATTRIBUTES)
        assert row.tolist() == list(label.identity.codes() + label.contexts[0].codes())


def test_make_dataset_with_grids():
    images, captions, labels = make_dataset(60, seed=0, grid_fraction=0.5)
    grids = [k for k, lab in enumerate(labels) if lab.is_grid]
    assert 15 < len(grids) < 45
    for img, cap, lab in zip(images, captions, labels):
        assert img.shape == ((3, 64, 64) if lab.is_grid else (3, 32, 32))
        assert cap.startswith("a 2x2 grid") == lab.is_grid
    assert labels_to_tensor([labels[k] for k in grids]).shape == (len(grids), 4, 7)
    with pytest.raises(ValueError):
        labels_to_tensor(labels)


def test_tile_grid_is_the_inverse_of_split_grid_for_images_and_latents():
    from protagonist.sprites.world import split_grid, tile_grid

    grids = torch.rand(3, 3, 64, 64)
    assert torch.equal(tile_grid(split_grid(grids)), grids)
    latents = torch.randn(2, 4, 16, 8, 8)  # 2 grids × 4 panels of 16-channel 8×8 latents
    tiled = tile_grid(latents)
    assert tiled.shape == (2, 16, 16, 16)
    assert torch.equal(tiled[:, :, 8:, :8], latents[:, 2])  # bottom-left is the third panel
