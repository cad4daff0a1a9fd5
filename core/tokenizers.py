"""Tokenizers built locally from a word list: a CLIP-style byte-level BPE and a T5-style unigram.

Nothing is downloaded. Each word of the list becomes (almost always) one token; any other text still
tokenises, falling back to characters, so prompts outside the list never fail.
"""

from __future__ import annotations

import json
import os
import string
from pathlib import Path

CLIP_SPECIALS = ("<|startoftext|>", "<|endoftext|>")
T5_SPECIALS = ("<pad>", "</s>", "<unk>")


def _byte_alphabet() -> list[str]:
    """CLIP's byte → printable-unicode symbols, in CLIP's vocabulary order (printable bytes first).

    The order matters: ComfyUI pads CLIP-G prompts with id 0, which must be "!" as in CLIP's vocabulary.
    """
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + n) for n in range(len(others))]


def _clip_vocab_and_merges(words: list[str]) -> tuple[dict[str, int], list[str]]:
    alphabet = _byte_alphabet()
    tokens = alphabet + [c + "</w>" for c in alphabet]
    merges: list[str] = []
    seen = set(tokens)
    # Longer words' merges rank first, so a short word's merge cannot split a longer word that contains it.
    for word in sorted(set(w.lower() for w in words if w), key=lambda w: (-len(w), w)):
        if any(c not in alphabet for c in word) or len(word) < 2:
            continue
        prefix = word[0]
        for i, char in enumerate(word[1:], start=1):
            piece = char + "</w>" if i == len(word) - 1 else char
            merges.append(f"{prefix} {piece}")
            prefix = prefix + piece
            if prefix not in seen:
                seen.add(prefix)
                tokens.append(prefix)
    merges = list(dict.fromkeys(merges))
    tokens += list(CLIP_SPECIALS)
    return {t: i for i, t in enumerate(tokens)}, merges


def _write_json(path: Path, value) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(value, ensure_ascii=False, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def write_clip_tokenizer(words: list[str], folder: str | os.PathLike, max_length: int = 77,
                         pad_token: str = "<|endoftext|>") -> Path:
    """Write vocab.json + merges.txt + configs that `CLIPTokenizer.from_pretrained(folder)` loads."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = _clip_vocab_and_merges(words)
    _write_json(folder / "vocab.json", vocab)
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    config = {"model_max_length": max_length, "bos_token": CLIP_SPECIALS[0], "eos_token": CLIP_SPECIALS[1],
              "unk_token": CLIP_SPECIALS[1], "pad_token": pad_token, "do_lower_case": True,
              "tokenizer_class": "CLIPTokenizer"}
    _write_json(folder / "tokenizer_config.json", config)
    _write_json(folder / "special_tokens_map.json",
                {k: config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")})
    return folder


def write_t5_tokenizer(words: list[str], folder: str | os.PathLike, max_length: int = 64) -> Path:
    """Write a unigram tokenizer.json (T5 conventions: no bos, "</s>" appended, "<pad>" = 0)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pieces = [(t, 0.0) for t in T5_SPECIALS]
    pieces += [("▁" + w.lower(), -1.0) for w in sorted(set(words)) if w]
    fallback = string.ascii_lowercase + string.digits + string.punctuation
    pieces += [("▁", -8.0)] + [(c, -10.0) for c in fallback] + [("▁" + c, -9.0) for c in fallback]
    pieces = list(dict((p, s) for p, s in pieces).items())
    tokenizer = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tmp = folder / "tokenizer.json.tmp"
    tokenizer.save(str(tmp))
    os.replace(tmp, folder / "tokenizer.json")
    config = {"model_max_length": max_length, "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
              "extra_ids": 0, "additional_special_tokens": [], "tokenizer_class": "T5Tokenizer"}
    _write_json(folder / "tokenizer_config.json", config)
    _write_json(folder / "special_tokens_map.json", {k: config[k] for k in ("eos_token", "unk_token", "pad_token")})
    return folder


def load_clip_tokenizer(folder):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(folder))


def load_t5_tokenizer(folder):
    from transformers import T5TokenizerFast

    return T5TokenizerFast.from_pretrained(str(folder))
