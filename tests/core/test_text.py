"""Prompt encoding with marked words and spliced textual-inversion tokens (SDXL and FLUX backends)."""

from __future__ import annotations

import contextlib

import pytest
import torch

from protagonist.core.backends import text
from protagonist.core.interface import ProtagonistError, TokenEmbedding, WordOffset, apply_word_offset

# The encoder key whose token ids index `Conditioning.embeds` positions, per family.
POSITION_KEY = {"sdxl": "clip_l", "flux": "t5"}


@pytest.fixture(params=["sdxl", "flux"])
def backend(request):
    return request.getfixturevalue(f"tiny_{request.param}_backend")


@contextlib.contextmanager
def frozen(backend):
    """Freeze every weight for the duration (as training a token does), then restore."""
    modules = backend.modules().values()
    saved = [(p, p.requires_grad) for m in modules for p in m.parameters()]
    for p, _ in saved:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


def _find(ids: list[int], sub: list[int]) -> list[int]:
    """Positions covered by every occurrence of `sub` in `ids`."""
    found = []
    for i in range(len(ids) - len(sub) + 1):
        if ids[i:i + len(sub)] == sub:
            found.extend(range(i, i + len(sub)))
    return found


# -- word positions ---------------------------------------------------------------------------------

@pytest.mark.parametrize("word", ["blob", "robot"])
def test_word_positions_are_the_words_tokens(backend, word):
    prompts = [f"a photo of {word}", f"the {word} on the beach with a red hat", f"{word} and {word} in snow"]
    tokenizer = backend.tokenizers[POSITION_KEY[backend.family]]
    with torch.no_grad():
        cond = backend.encode_prompts(prompts, word=word)
    word_ids = tokenizer(word, add_special_tokens=False)["input_ids"]
    assert word_ids
    for prompt, positions in zip(prompts, cond.word_positions):
        ids = tokenizer(prompt)["input_ids"]
        assert positions == _find(ids, word_ids), prompt
    assert len(cond.word_positions[2]) == 2 * len(word_ids)
    assert cond.embeds.shape[0] == 3


def test_word_positions_sdxl_blob_exact(tiny_sdxl_backend):
    tokenizer = tiny_sdxl_backend.tokenizers["clip_l"]
    blob = tokenizer("blob", add_special_tokens=False)["input_ids"]
    assert len(blob) == 1
    with torch.no_grad():
        cond = tiny_sdxl_backend.encode_prompts(["a photo of blob"], word="blob")
    assert cond.word_positions == [[4]]  # <bos> a photo of blob
    ids = tokenizer("a photo of blob")["input_ids"]
    assert ids[4] == blob[0] and ids.count(blob[0]) == 1


def test_word_is_matched_as_a_whole_word_case_insensitively(tiny_sdxl_backend):
    with torch.no_grad():
        cond = tiny_sdxl_backend.encode_prompts(["a blobby cat and a Blob"], word="blob")
    tokenizer = tiny_sdxl_backend.tokenizers["clip_l"]
    ids = tokenizer("a blobby cat and a Blob")["input_ids"]
    blob = tokenizer("blob", add_special_tokens=False)["input_ids"]
    assert cond.word_positions == [[len(ids) - 2]]
    assert ids[len(ids) - 2] == blob[0]


def test_missing_word_lists_the_prompts_words(backend):
    with pytest.raises(ProtagonistError) as error:
        backend.encode_prompts(["a photo of a dog", "a cat on the beach"], word="dog")
    message = str(error.value)
    assert "'dog'" in message and "a cat on the beach" in message
    for w in ("beach", "cat", "on", "the"):
        assert f"'{w}'" in message


def test_no_word_means_no_positions(backend):
    with torch.no_grad():
        cond = backend.encode_prompts(["a photo of blob"])
    assert cond.word_positions is None
    with pytest.raises(ProtagonistError):
        apply_word_offset(cond, WordOffset("blob", torch.ones(cond.embeds.shape[-1])))


def test_span_tokenization_matches_whole_prompt_tokenization(backend):
    """Splitting a prompt around the word must not change its token ids (whitespace-separated words)."""
    for key, tokenizer in backend.tokenizers.items():
        length = tokenizer.model_max_length if key != "t5" else backend.max_sequence_length
        stand_in = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.pad_token_id
        for prompt in ["a photo of blob", "blob on the beach at night", "a striped blob with a bow , left"]:
            tok = text.tokenize_prompt(tokenizer, prompt, length, [], "blob", stand_in)
            whole = tokenizer(prompt, padding="max_length", max_length=length, truncation=True)["input_ids"]
            assert tok.ids == whole, (key, prompt)


@pytest.mark.xfail(reason="core/backends/text.py tokenize_prompt: a span glued to punctuation ('blob,') is "
                          "tokenised apart from it, so T5 ids differ from the whole prompt's", strict=False)
def test_span_tokenization_with_glued_punctuation_t5(tiny_flux_backend):
    tokenizer = tiny_flux_backend.tokenizers["t5"]
    prompt = "a blob, on the beach"
    tok = text.tokenize_prompt(tokenizer, prompt, 32, [], "blob", tokenizer.pad_token_id)
    assert tok.ids == tokenizer(prompt, padding="max_length", max_length=32)["input_ids"]


# -- word offsets -----------------------------------------------------------------------------------

def test_word_offset_changes_only_the_word_positions(backend):
    prompts = ["a photo of blob", "blob and blob on the beach"]
    with torch.no_grad():
        cond = backend.encode_prompts(prompts, word="blob")
    width = cond.embeds.shape[-1]
    offset = torch.randn(width, generator=torch.Generator().manual_seed(3))
    shifted = apply_word_offset(cond, WordOffset("blob", offset, scale=0.7))
    mask = torch.zeros(cond.embeds.shape[:2], dtype=torch.bool)
    for b, positions in enumerate(cond.word_positions):
        mask[b, positions] = True
    assert mask.sum() >= 3
    assert torch.equal(shifted.embeds[~mask], cond.embeds[~mask])  # bit-identical elsewhere
    delta = shifted.embeds[mask] - cond.embeds[mask]
    assert torch.allclose(delta, (0.7 * offset).expand_as(delta), atol=1e-6)
    assert torch.equal(shifted.pooled, cond.pooled)
    assert shifted.word_positions == cond.word_positions
    assert set(shifted.extras) == set(cond.extras)


def test_word_offset_per_prompt_and_shape_check(backend):
    with torch.no_grad():
        cond = backend.encode_prompts(["a blob", "the blob"], word="blob")
    width = cond.embeds.shape[-1]
    offsets = torch.stack([torch.full((width,), 1.0), torch.full((width,), -2.0)])
    shifted = apply_word_offset(cond, WordOffset("blob", offsets, scale=0.5))
    for b, expected in enumerate((0.5, -1.0)):
        (p,) = cond.word_positions[b]
        assert torch.allclose(shifted.embeds[b, p] - cond.embeds[b, p], torch.full((width,), expected), atol=1e-6)
    with pytest.raises(ProtagonistError):
        apply_word_offset(cond, WordOffset("blob", torch.ones(width + 1)))
    with pytest.raises(ProtagonistError):
        apply_word_offset(cond, WordOffset("blob", torch.ones(3, width)))


# -- textual-inversion tokens -----------------------------------------------------------------------

def _hero(backend, n_vectors=2, seed=0, requires_grad=True):
    g = torch.Generator().manual_seed(seed)
    widths = backend.token_width()
    assert set(widths) == set(backend.text_encoder_keys)
    return TokenEmbedding("<hero>", {k: (0.02 * torch.randn(n_vectors, w, generator=g)).requires_grad_(requires_grad)
                                     for k, w in widths.items()})


def test_token_keys_and_widths(tiny_sdxl_backend, tiny_flux_backend):
    assert tiny_sdxl_backend.text_encoder_keys == ("clip_l", "clip_g")
    assert tiny_sdxl_backend.token_width() == {"clip_l": 32, "clip_g": 64}
    assert tiny_flux_backend.text_encoder_keys == ("clip_l", "t5")
    assert tiny_flux_backend.token_width() == {"clip_l": 32, "t5": 32}
    rows = tiny_sdxl_backend.word_embedding("dog")
    table = tiny_sdxl_backend.embedding_tables()["clip_g"]
    dog = tiny_sdxl_backend.tokenizers["clip_g"]("dog", add_special_tokens=False)["input_ids"]
    assert torch.equal(rows["clip_g"], table.weight[dog])
    assert not rows["clip_g"].requires_grad


# (family, encoder key): every encoder a token's vectors go through.
ENCODER_KEYS = [("sdxl", "clip_l"), ("sdxl", "clip_g"), ("flux", "clip_l"),
                ("flux", "t5")]


def _key_output(backend, cond, key) -> torch.Tensor:
    """The part of a conditioning that the text encoder `key` produces."""
    if backend.family == "sdxl":
        width = backend.token_width()["clip_l"]
        return cond.embeds[..., :width] if key == "clip_l" else torch.cat(
            [cond.embeds[..., width:].flatten(1), cond.pooled], dim=1)
    return cond.pooled if key == "clip_l" else cond.embeds


def test_token_splice_changes_encoding_and_positions(backend):
    hero = _hero(backend, requires_grad=False)
    prompt = "a photo of <hero> blob"
    with torch.no_grad():
        plain = backend.encode_prompts([prompt], word="blob")
        spliced = backend.encode_prompts([prompt], tokens=[hero], word="blob")
    assert not torch.allclose(plain.pooled, spliced.pooled, atol=1e-4)
    tokenizer = backend.tokenizers[POSITION_KEY[backend.family]]
    prefix = len(tokenizer("a photo of", add_special_tokens=True)["input_ids"]) - 1  # drop the eos
    assert spliced.word_positions == [[prefix + hero.num_vectors]]


@pytest.mark.parametrize("family, key", ENCODER_KEYS)
def test_token_vectors_drive_their_encoder(request, family, key):
    backend = request.getfixturevalue(f"tiny_{family}_backend")
    hero = _hero(backend, requires_grad=False)
    other = TokenEmbedding(hero.name, dict(hero.vectors))
    # a random change (a constant one would vanish in the encoders' LayerNorms)
    other.vectors[key] = hero.vectors[key] + torch.randn(hero.vectors[key].shape, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        first = backend.encode_prompts(["a photo of <hero> blob"], tokens=[hero])
        second = backend.encode_prompts(["a photo of <hero> blob"], tokens=[other])
    assert (_key_output(backend, first, key) - _key_output(backend, second, key)).abs().max() > 1e-3


@pytest.mark.parametrize("family, key", ENCODER_KEYS)
def test_token_with_the_words_own_rows_equals_the_word(request, family, key):
    """Splicing a token whose vectors are the vocabulary rows of "dog" encodes exactly like "dog"."""
    backend = request.getfixturevalue(f"tiny_{family}_backend")
    rows = backend.word_embedding("dog")
    assert rows[key].shape[0] == 1
    hero = _hero(backend, n_vectors=1, requires_grad=False)
    hero.vectors[key] = rows[key]
    with torch.no_grad():
        as_token = backend.encode_prompts(["a photo of <hero> on the beach"], tokens=[hero])
        as_word = backend.encode_prompts(["a photo of dog on the beach"])
    assert (_key_output(backend, as_token, key) - _key_output(backend, as_word, key)).abs().max() < 1e-5


@pytest.mark.parametrize("family, key", ENCODER_KEYS)
def test_gradients_reach_token_vectors(request, family, key):
    backend = request.getfixturevalue(f"tiny_{family}_backend")
    hero = _hero(backend)
    with frozen(backend):
        cond = backend.encode_prompts(["a photo of <hero> blob", "<hero> blob on the beach"], tokens=[hero],
                                      word="blob")
        out = _key_output(backend, cond, key)
        assert out.requires_grad
        out.square().mean().backward()
    grad = hero.vectors[key].grad
    assert grad is not None
    assert torch.isfinite(grad).all()
    assert (grad.abs().sum(-1) > 0).all()  # every vector row of the token gets gradient


def test_embedding_tables_are_unchanged_and_get_no_grad(backend):
    hero = _hero(backend)
    tables = backend.embedding_tables()
    assert set(tables) == set(backend.text_encoder_keys)
    before = {k: t.weight.detach().clone() for k, t in tables.items()}
    with frozen(backend):
        cond = backend.encode_prompts(["a photo of <hero> blob"], tokens=[hero], word="blob")
        (cond.embeds.square().mean() + cond.pooled.square().mean()).backward()
    for key, table in tables.items():
        assert table.weight.grad is None, key
        assert torch.equal(table.weight, before[key]), key


def test_spliced_positions_pass_no_gradient_to_the_table(tiny_sdxl_backend):
    """Even with a trainable table, the stand-in ids under a token receive zero gradient."""
    backend = tiny_sdxl_backend
    hero = _hero(backend)
    embedding = backend.embedding_tables()["clip_l"]
    grads = {}

    def capture(module, inputs, output):  # registered before the splice hook, so sees the raw rows
        output.register_hook(lambda g: grads.setdefault("rows", g))

    handle = embedding.register_forward_hook(capture)
    try:
        cond = backend.encode_prompts(["a photo of <hero> blob"], tokens=[hero], word="blob")
        cond.embeds.square().mean().backward()
    finally:
        handle.remove()
        for module in backend.modules().values():
            module.zero_grad(set_to_none=True)
    rows = grads["rows"][0]
    assert torch.all(rows[4:6] == 0)        # the two <hero> positions
    assert rows[[1, 2, 3, 6]].abs().sum(-1).min() > 0  # real words do get gradient


def test_token_width_mismatch_is_a_protagonist_error(backend):
    widths = backend.token_width()
    key = backend.text_encoder_keys[0]
    vectors = {k: torch.zeros(1, w + (3 if k == key else 0)) for k, w in widths.items()}
    with pytest.raises(ProtagonistError) as error:
        backend.encode_prompts(["a photo of <hero>"], tokens=[TokenEmbedding("<hero>", vectors)])
    assert "<hero>" in str(error.value) and key in str(error.value)


def test_two_tokens_in_one_prompt(backend):
    a, b = _hero(backend, 1, seed=1, requires_grad=False), _hero(backend, 1, seed=2, requires_grad=False)
    a.name, b.name = "<a>", "<b>"
    with torch.no_grad():
        both = backend.encode_prompts(["<a> and <b> on the beach"], tokens=[a, b])
        swapped = backend.encode_prompts(["<b> and <a> on the beach"], tokens=[a, b])
    assert not (torch.allclose(both.embeds, swapped.embeds, atol=1e-5)
                and torch.allclose(both.pooled, swapped.pooled, atol=1e-5))
    tokenizer = backend.tokenizers["clip_l"]
    tok = text.tokenize_prompt(tokenizer, "<a> and <b> on the beach", 77, [a, b], None, tokenizer.bos_token_id)
    and_id = tokenizer("and", add_special_tokens=False)["input_ids"]
    assert tok.splices == [(1, "<a>", 0), (1 + 1 + len(and_id), "<b>", 0)]
    assert tok.word_positions == []
