"""Prompt tokenisation with marked spans, and text encoding with spliced textual-inversion vectors.

A prompt is split around the spans we care about (a textual-inversion token's name, the word that
takes an offset); each span is tokenised on its own so its token positions are known exactly. CLIP's
and T5's tokenisers pre-split on whitespace, so this gives the same ids as tokenising the whole prompt.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass

import torch

from ..interface import ProtagonistError, TokenEmbedding, missing_word_error, whole_word_pattern


@dataclass
class TokenizedPrompt:
    ids: list[int]
    word_positions: list[int]
    splices: list[tuple[int, str, int]]  # (position, token name, vector row)


def _span_pattern(names: list[str], word: str | None) -> re.Pattern | None:
    parts = [re.escape(n) for n in sorted(names, key=len, reverse=True)]
    if word:
        parts.append(whole_word_pattern(word))
    return re.compile("(" + "|".join(parts) + ")", re.IGNORECASE) if parts else None


def _special_ids(tokenizer) -> tuple[list[int], list[int]]:
    """Ids the tokenizer puts before and after the text (CLIP: [bos], [eos]; T5: [], [eos])."""
    empty = tokenizer("", add_special_tokens=True)["input_ids"]
    return list(empty[:-1]), list(empty[-1:])


def tokenize_prompt(tokenizer, prompt: str, max_length: int, tokens: list[TokenEmbedding],
                    word: str | None, stand_in_id: int) -> TokenizedPrompt:
    """Token ids of `prompt` padded to `max_length`, with the positions of `word` and of each token."""
    by_name = {t.name.lower(): t for t in tokens}
    pattern = _span_pattern([t.name for t in tokens], word)
    pieces = pattern.split(prompt) if pattern else [prompt]
    prefix, suffix = _special_ids(tokenizer)
    ids, positions, splices = list(prefix), [], []
    for piece in pieces:
        if not piece:
            continue
        key = piece.lower()
        if key in by_name:
            start = len(ids)
            ids.extend([stand_in_id] * by_name[key].num_vectors)
            splices.extend((start + r, by_name[key].name, r) for r in range(by_name[key].num_vectors))
            continue
        piece_ids = tokenizer(piece, add_special_tokens=False)["input_ids"]
        if word is not None and key == word.lower():
            positions.extend(range(len(ids), len(ids) + len(piece_ids)))
        ids.extend(piece_ids)
    limit = max_length - len(suffix)
    ids = ids[:limit] + suffix
    positions = [p for p in positions if p < limit]
    splices = [s for s in splices if s[0] < limit]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else suffix[-1]
    ids += [pad_id] * (max_length - len(ids))
    return TokenizedPrompt(ids, positions, splices)


def check_word(prompts: list[str], tokenized: list[TokenizedPrompt], word: str | None) -> None:
    if word is None:
        return
    for prompt, tok in zip(prompts, tokenized):
        if not tok.word_positions:
            raise missing_word_error(word, prompt)


def tokenize_batch(tokenizer, prompts, max_length, tokens, word, stand_in_id):
    tokenized = [tokenize_prompt(tokenizer, p, max_length, tokens, word, stand_in_id) for p in prompts]
    check_word(prompts, tokenized, word)
    return tokenized


@contextlib.contextmanager
def spliced_embeddings(embedding: torch.nn.Module, tokenized: list[TokenizedPrompt],
                       tokens: list[TokenEmbedding], key: str):
    """While active, the token embedding output takes each token's own vectors at its positions."""
    vectors = {t.name: t.vectors[key] for t in tokens}
    splices = [(b, pos, name, row) for b, tok in enumerate(tokenized) for pos, name, row in tok.splices]
    if not splices:
        yield
        return
    for name, block in vectors.items():
        if block.shape[-1] != embedding.weight.shape[1]:
            raise ProtagonistError(
                f"token {name!r} has {key} vectors of width {block.shape[-1]}, but this model's {key} "
                f"embeddings are {embedding.weight.shape[1]} wide: the token was made for another model")

    def replace(module, inputs, output):
        mask = torch.zeros(output.shape[:2], dtype=torch.bool, device=output.device)
        replacement = torch.zeros_like(output)
        for b, pos, name, row in splices:
            mask[b, pos] = True
            replacement[b, pos] = vectors[name][row].to(output)
        return torch.where(mask[..., None], replacement, output)

    handle = embedding.register_forward_hook(replace)
    try:
        yield
    finally:
        handle.remove()


def input_embedding(encoder) -> torch.nn.Module:
    """The module that looks token ids up in `encoder`.

    transformers 5's T5 encoder looks tokens up through `encoder.embed_tokens`, a module distinct from
    the model's `get_input_embeddings()` (they share the weight), so a hook must sit on the former.
    """
    inner = getattr(getattr(encoder, "encoder", None), "embed_tokens", None)
    return inner if inner is not None else encoder.get_input_embeddings()


def word_rows(tokenizer, embedding: torch.nn.Module, word: str) -> torch.Tensor:
    """The embedding rows of `word`'s tokens ([n_tokens, width])."""
    ids = tokenizer(word, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ProtagonistError(f"the word {word!r} gives no tokens")
    return embedding.weight[torch.tensor(ids, device=embedding.weight.device)].detach().clone()
