"""A prior for OneActor's word offset: the directions in which the text encoder itself moves the base word.

Fitted to one target image, a free offset also learns what is particular to that image (sprite world:
cosine 0.5 with the offset of the target's full description; bench/results/sprite_methods.md, session 16).
The base word's encoded state, once preceded by other words ("a tall red striped man"), moves in a
low-dimensional set of directions; an offset kept in their span can only say what some words could have
said. The span comes from the tokenizer's own vocabulary, not from any list of attributes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..interface import DiffusionBackend, ProtagonistError

_BATCH = 500


def vocabulary_words(tokenizer, min_length: int = 3) -> list[str]:
    """Whole alphabetic words of a CLIP (`word</w>`) or SentencePiece (`▁word`) vocabulary, sorted."""
    words = set()
    for token in tokenizer.get_vocab():
        word = token[:-4] if token.endswith("</w>") else token[1:] if token.startswith("▁") else None
        if word and word.isalpha() and len(word) >= min_length:
            words.add(word.lower())
    return sorted(words)


def backend_words(backend: DiffusionBackend) -> list[str]:
    """The vocabulary of the backend's first tokenizer."""
    tokenizers = getattr(backend, "tokenizers", None)
    if not tokenizers:
        raise ProtagonistError("this backend exposes no tokenizer to take the offset subspace's words from; "
                               "pass `subspace_words`")
    return vocabulary_words(next(iter(tokenizers.values())))


def word_state_prompts(words: Sequence[str], base_word: str, count: int, seed: int = 0) -> list[str]:
    """`count` prompts "a w1 … wm {base_word}" with 1–4 words drawn from `words`."""
    if not words:
        raise ProtagonistError("no words to build the offset subspace from")
    rng = np.random.default_rng(seed)
    return ["a " + " ".join(rng.choice(list(words), int(rng.integers(1, 5)))) + f" {base_word}"
            for _ in range(count)]


@torch.no_grad()
def word_state_basis(backend: DiffusionBackend, base_word: str, words: Sequence[str], rank: int,
                     prompts: int = 3000, seed: int = 0) -> torch.Tensor:
    """[rank, width]: orthonormal principal directions of the base word's encoded state over random prompts."""
    if rank < 1:
        raise ProtagonistError(f"the offset subspace needs a rank of at least 1, got {rank}")
    texts = word_state_prompts(words, base_word, prompts, seed)
    states = []
    for start in range(0, len(texts), _BATCH):
        cond = backend.encode_prompts(texts[start:start + _BATCH], word=base_word)
        states += [cond.embeds[b, positions].float().mean(dim=0) for b, positions in enumerate(cond.word_positions)]
    states = torch.stack(states).cpu()
    if rank > min(states.shape):
        raise ProtagonistError(f"an offset subspace of rank {rank} needs more than {states.shape[0]} prompts and "
                               f"at most the embedding width {states.shape[1]}")
    _, _, directions = torch.linalg.svd(states - states.mean(dim=0), full_matrices=False)
    return directions[:rank].contiguous()
