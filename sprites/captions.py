"""Captions of sprite-world images and the parser that reads them back.

Single image:  ``a [shape] [color] [pattern] blob [with EYES [and ACCESSORY]] BACKGROUND, POSITION``
e.g. "a blob on a beach, on the left", "a red striped blob with a hat in a forest, on the right";
or, with every attribute before the class word, "a one eyed hatted red blob in a forest, on the right".

2x2 grid:  ``a 2x2 grid of the same <blob phrase>: BACKGROUND, POSITION; BACKGROUND, POSITION; ...``
(four panels, row-major).  All words are lowercase and drawn from :data:`VOCABULARY`;
the only punctuation is :data:`PUNCTUATION` (comma, colon and the semicolon separating grid panels).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import numpy as np

from .attributes import (
    ADJECTIVE_ATTRIBUTES,
    ATTRIBUTES,
    CLASS_WORD,
    CONTEXT_ATTRIBUTES,
    IDENTITY_ATTRIBUTES,
    PRENOMINAL_WORDS,
    WITH_ATTRIBUTES,
    WORDS,
    Context,
    Identity,
)

GRID_PREFIX = "a 2x2 grid of the same"
PUNCTUATION: tuple[str, ...] = (",", ":", ";")
#: Probability that :func:`random_caption` mentions identity attributes at all.
MENTION_PROBABILITY = 0.7
#: Most identity attributes one random caption names (all five, so fully described characters are
#: in the training distribution).
MAX_MENTIONED = 5
#: Probability that a random caption names eyes and accessory before the class word.
PRENOMINAL_PROBABILITY = 0.5


def blob_phrase(identity: Identity, mention: Iterable[str] = (), prenominal: bool = False) -> str:
    """``"a red striped blob with a hat"``; attributes in ``mention`` are named in a fixed order.

    ``prenominal`` names eyes and accessory as adjectives first: ``"a hatted red striped blob"``.
    """
    mention = set(mention)
    unknown = mention - set(IDENTITY_ATTRIBUTES)
    if unknown:
        raise ValueError(f"cannot mention {sorted(unknown)}; identity attributes are {IDENTITY_ATTRIBUTES}")
    words = identity.words()
    adjectives = [words[a] for a in ADJECTIVE_ATTRIBUTES if a in mention]
    withs = [words[a] for a in WITH_ATTRIBUTES if a in mention]
    if prenominal:
        adjectives = [PRENOMINAL_WORDS[a][getattr(identity, a)] for a in WITH_ATTRIBUTES if a in mention] + adjectives
        withs = []
    phrase = " ".join(["a", *adjectives, CLASS_WORD])
    if withs:
        phrase += " with " + " and ".join(withs)
    return phrase


def context_phrase(context: Context) -> str:
    """``"on a beach, on the left"``."""
    words = context.words()
    return f"{words['background']}, {words['position']}"


def caption(identity: Identity, context: Context, mention: Iterable[str] = (), prenominal: bool = False) -> str:
    """Caption of a single render, e.g. ``"a red blob with a hat in a forest, on the right"``."""
    return f"{blob_phrase(identity, mention, prenominal)} {context_phrase(context)}"


def grid_caption(identity: Identity, contexts: Sequence[Context], mention: Iterable[str] = (),
                 prenominal: bool = False) -> str:
    """Caption of a 2x2 grid: ``"a 2x2 grid of the same blob: on a beach, on the left; ..."``."""
    if len(contexts) != 4:
        raise ValueError(f"a grid has 4 panels, got {len(contexts)} contexts")
    blob = blob_phrase(identity, mention, prenominal)[len("a "):]
    panels = "; ".join(context_phrase(c) for c in contexts)
    return f"{GRID_PREFIX} {blob}: {panels}"


def random_mention(rng: np.random.Generator) -> tuple[str, ...]:
    """With probability 1 - MENTION_PROBABILITY nothing; otherwise one to :data:`MAX_MENTIONED` random identity attributes."""
    if rng.random() >= MENTION_PROBABILITY:
        return ()
    k = int(rng.integers(1, MAX_MENTIONED + 1))
    picked = rng.choice(len(IDENTITY_ATTRIBUTES), size=k, replace=False)
    return tuple(IDENTITY_ATTRIBUTES[i] for i in sorted(picked))


def random_naming(rng: np.random.Generator, prenominal_rate: float = PRENOMINAL_PROBABILITY
                  ) -> tuple[tuple[str, ...], bool]:
    """(attributes to mention, whether eyes and accessory go before the class word)."""
    mention = random_mention(rng)
    return mention, rng.random() < prenominal_rate


def random_caption(identity: Identity, context: Context, rng: np.random.Generator,
                   prenominal_rate: float = PRENOMINAL_PROBABILITY) -> str:
    return caption(identity, context, *random_naming(rng, prenominal_rate))


def random_grid_caption(identity: Identity, contexts: Sequence[Context], rng: np.random.Generator,
                        prenominal_rate: float = PRENOMINAL_PROBABILITY) -> str:
    return grid_caption(identity, contexts, *random_naming(rng, prenominal_rate))


def _phrases(attr: str) -> list[tuple[int, str]]:
    """(value code, phrase) of every way a caption names a value of `attr`."""
    forms = [WORDS[attr], *([PRENOMINAL_WORDS[attr]] if attr in PRENOMINAL_WORDS else [])]
    return [(code, phrase) for form in forms for code, phrase in enumerate(form)]


def _build_vocabulary() -> list[str]:
    words = {"a", CLASS_WORD, "with", "and", *GRID_PREFIX.split()}
    for attr in IDENTITY_ATTRIBUTES + CONTEXT_ATTRIBUTES:
        for _, phrase in _phrases(attr):
            words.update(phrase.split())
    return sorted(words)


#: Every word any caption (single or grid) can contain, sorted.
VOCABULARY: list[str] = _build_vocabulary()


def tokenize(text: str) -> list[str]:
    """Lowercase words of ``text`` with punctuation stripped (``"2x2"`` stays one word)."""
    return re.findall(r"[a-z0-9]+", text.lower())


def _find(attr: str, text: str) -> list[tuple[int, str]]:
    """(offset, value name) of every phrase of ``attr`` found as whole words in ``text``."""
    hits = []
    for code, phrase in _phrases(attr):
        for m in re.finditer(r"(?<![a-z0-9])" + re.escape(phrase) + r"(?![a-z0-9])", text):
            hits.append((m.start(), ATTRIBUTES[attr][code]))
    return sorted(hits)


def _named(attributes, text: str) -> dict[str, str]:
    """The first value named in `text` of each of `attributes`."""
    found = {}
    for attr in attributes:
        hits = _find(attr, text)
        if hits:
            found[attr] = hits[0][1]
    return found


def _identity_part(text: str) -> dict[str, str]:
    return _named(IDENTITY_ATTRIBUTES, text)


def _context_part(text: str) -> dict[str, str]:
    return _named(CONTEXT_ATTRIBUTES, text)


def parse_prompt(prompt: str) -> dict:
    """Attributes named in a caption or prompt, as value names.

    Single prompt: ``{"background": "beach", "position": "left", "color": "red", ...}``
    (only the attributes that are named).  Grid prompt (starts with the grid prefix or
    contains "grid"): the identity attributes plus ``"grid": True`` and ``"panels"``, a list
    of per-panel context dicts in caption order (split on ";").
    Whitespace and case are normalised; unknown words are ignored.
    """
    text = " ".join(tokenize_keep_punct(prompt))
    if "grid" not in tokenize(text):
        out = _identity_part(text)
        out.update(_context_part(text))
        return out
    head, _, tail = text.partition(":")
    out = _identity_part(head)
    out["grid"] = True
    out["panels"] = [_context_part(chunk) for chunk in tail.split(";")] if tail else []
    return out


def tokenize_keep_punct(text: str) -> list[str]:
    """Words and the punctuation marks of :data:`PUNCTUATION` (so panels stay separable)."""
    return re.findall(r"[a-z0-9]+|[,:;]", text.lower())
