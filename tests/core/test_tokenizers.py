"""Tokenizers written locally from a word list (CLIP byte-level BPE, T5 unigram)."""

from __future__ import annotations

import pytest

from protagonist.core import tokenizers as local
from protagonist.core.tiny_models import TINY_WORDS

WORDS = ["blob", "photo", "forest", "beach", "zigzag", "a", "of"]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    folder = local.write_clip_tokenizer(WORDS, tmp_path_factory.mktemp("clip"), max_length=16)
    return local.load_clip_tokenizer(folder)


@pytest.fixture(scope="module")
def clip_tiny(tmp_path_factory):
    return local.load_clip_tokenizer(local.write_clip_tokenizer(list(TINY_WORDS), tmp_path_factory.mktemp("clipt")))


@pytest.fixture(scope="module")
def t5(tmp_path_factory):
    folder = local.write_t5_tokenizer(list(TINY_WORDS) + ["zigzag"], tmp_path_factory.mktemp("t5"), max_length=12)
    return local.load_t5_tokenizer(folder)


def _single_token_failures(tokenizer, words):
    failures = {}
    for word in words:
        ids = tokenizer(word, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            failures[word] = tokenizer.convert_ids_to_tokens(ids)
    return failures


def test_clip_words_are_single_tokens(clip):
    assert _single_token_failures(clip, WORDS) == {}
    ids = clip("a photo of blob")["input_ids"]
    assert ids[0] == clip.bos_token_id and ids[-1] == clip.eos_token_id and len(ids) == 6
    assert clip.convert_ids_to_tokens(ids[1:-1]) == ["a</w>", "photo</w>", "of</w>", "blob</w>"]


def test_clip_every_tiny_word_is_a_single_token(clip_tiny):
    assert _single_token_failures(clip_tiny, TINY_WORDS) == {}


def test_clip_text_outside_the_vocabulary_still_tokenises(clip):
    for prompt in ["zebra xylophone", "Quick brown fox, 42 times!", "éàü ☃", "BLOB"]:
        ids = clip(prompt)["input_ids"]
        assert ids[0] == clip.bos_token_id and ids[-1] == clip.eos_token_id and len(ids) > 2
    assert clip.decode(clip("zebra xylophone")["input_ids"], skip_special_tokens=True).strip() == "zebra xylophone"
    # lower-cased like CLIP's own tokenizer
    assert clip("BLOB", add_special_tokens=False)["input_ids"] == clip("blob", add_special_tokens=False)["input_ids"]


def test_clip_padding_and_specials(tmp_path, clip):
    assert clip.model_max_length == 16
    padded = clip("a blob", padding="max_length", max_length=16)["input_ids"]
    assert len(padded) == 16 and padded[3:] == [clip.eos_token_id] * 13  # pads with eos by default
    bang = local.load_clip_tokenizer(local.write_clip_tokenizer(WORDS, tmp_path / "g", pad_token="!"))
    padded = bang("a blob", padding="max_length", max_length=8)["input_ids"]
    assert padded[3] == bang.eos_token_id and padded[4:] == [bang.convert_tokens_to_ids("!")] * 4


def test_t5_words_are_single_pieces_with_eos_and_pad(t5):
    assert _single_token_failures(t5, list(TINY_WORDS) + ["zigzag"]) == {}
    assert t5.eos_token_id == 1 and t5.pad_token_id == 0
    ids = t5("a photo of blob")["input_ids"]
    assert len(ids) == 5 and ids[-1] == 1 and 0 not in ids
    padded = t5("a blob", padding="max_length", max_length=12)["input_ids"]
    assert padded[:3] == t5("a blob")["input_ids"] and padded[2] == 1 and padded[3:] == [0] * 9


def test_t5_text_outside_the_vocabulary_still_tokenises(t5):
    for prompt in ["zebra xylophone", "quick fox, 42 times!"]:
        ids = t5(prompt)["input_ids"]
        assert ids[-1] == 1 and len(ids) > 2
        assert t5.unk_token_id not in ids, t5.convert_ids_to_tokens(ids)


@pytest.mark.xfail(reason="core/tokenizers.py load_t5_tokenizer: T5TokenizerFast.from_pretrained (transformers 5) "
                          "rebuilds the pipeline and drops the Lowercase normalizer written by write_t5_tokenizer, "
                          "so capital letters become <unk> ('Blob' → ['▁', '<unk>', 'l', 'o', 'b'])", strict=False)
def test_t5_is_case_insensitive(t5):
    assert t5("A Photo of Blob")["input_ids"] == t5("a photo of blob")["input_ids"]


def test_tokenizer_folders_are_rewritable(tmp_path):
    """Writing twice into the same folder (e.g. a cached tokenizer dir) works and is deterministic."""
    first = (local.write_clip_tokenizer(WORDS, tmp_path / "c") / "vocab.json").read_text()
    second = (local.write_clip_tokenizer(WORDS, tmp_path / "c") / "vocab.json").read_text()
    assert first == second
    local.write_t5_tokenizer(WORDS, tmp_path / "t")
    local.write_t5_tokenizer(WORDS, tmp_path / "t")
    assert local.load_t5_tokenizer(tmp_path / "t")("blob")["input_ids"][-1] == 1
