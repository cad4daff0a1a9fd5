"""Attribute tables of the sprite world and the `Identity` / `Context` records.

Every character ("blob") has five hidden identity attributes; every render has
two prompt-controlled context attributes.  Values are stored as small integers
(indices into :data:`ATTRIBUTES`); names and caption words are looked up here.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, fields

#: Bump when the look of any attribute value changes (invalidates oracles).
RENDER_VERSION = 2

CLASS_WORD = "blob"

IDENTITY_ATTRIBUTES: tuple[str, ...] = ("shape", "color", "pattern", "eyes", "accessory")
CONTEXT_ATTRIBUTES: tuple[str, ...] = ("background", "position")
ATTRIBUTE_NAMES: tuple[str, ...] = IDENTITY_ATTRIBUTES + CONTEXT_ATTRIBUTES

#: Names of the values of every attribute (index = value code).
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "shape": ("round", "square", "triangle", "diamond"),
    "color": ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink"),
    "pattern": ("plain", "stripes", "dots", "bicolor"),
    "eyes": ("two", "one", "sleepy"),
    "accessory": ("none", "hat", "bow"),
    "background": ("beach", "forest", "snow", "night", "desert", "city"),
    "position": ("left", "center", "right"),
}

#: Caption phrase of every value.  Identity phrases are adjectives (shape,
#: color, pattern) placed before the class word, or objects of "with" (eyes,
#: accessory).  Context phrases are complete prepositional phrases.
WORDS: dict[str, tuple[str, ...]] = {
    "shape": ("round", "square", "triangular", "diamond"),
    "color": ATTRIBUTES["color"],
    "pattern": ("plain", "striped", "spotted", "bicolor"),
    "eyes": ("two eyes", "one eye", "sleepy eyes"),
    "accessory": ("no accessory", "a hat", "a bow"),
    "background": ("on a beach", "in a forest", "in the snow", "at night", "in a desert", "in a city"),
    "position": ("on the left", "in the center", "on the right"),
}

ADJECTIVE_ATTRIBUTES: tuple[str, ...] = ("shape", "color", "pattern")
WITH_ATTRIBUTES: tuple[str, ...] = ("eyes", "accessory")

#: Adjective forms of the "with" attributes ("a one eyed hatted blob").  A causal text encoder only
#: folds words that come *before* the class word into its token, and OneActor steers that token, so
#: captions must sometimes name every attribute before it.  Not part of the oracle's table hash:
#: captions do not change how a sprite looks.
PRENOMINAL_WORDS: dict[str, tuple[str, ...]] = {
    "eyes": ("two eyed", "one eyed", "sleepy eyed"),
    "accessory": ("bare", "hatted", "bowed"),
}


def attribute_table_hash() -> str:
    """Short hash of the attribute tables + render version (stored with oracle weights)."""
    blob = json.dumps({"tables": ATTRIBUTES, "words": WORDS, "version": RENDER_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def _value_code(attr: str, value: int | str) -> int:
    names = ATTRIBUTES[attr]
    if isinstance(value, str):
        if value not in names:
            raise ValueError(f"unknown {attr} {value!r}; expected one of {names}")
        return names.index(value)
    code = int(value)
    if not 0 <= code < len(names):
        raise ValueError(f"{attr} code {code} out of range 0..{len(names) - 1}")
    return code


class _Record:
    """Mixed-radix index encoding shared by Identity and Context."""

    _ATTRS: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for attr in self._ATTRS:
            object.__setattr__(self, attr, _value_code(attr, getattr(self, attr)))

    @classmethod
    def count(cls) -> int:
        total = 1
        for attr in cls._ATTRS:
            total *= len(ATTRIBUTES[attr])
        return total

    @classmethod
    def from_index(cls, index: int):
        index = int(index)
        if not 0 <= index < cls.count():
            raise ValueError(f"{cls.__name__} index {index} out of range 0..{cls.count() - 1}")
        codes = {}
        for attr in reversed(cls._ATTRS):
            n = len(ATTRIBUTES[attr])
            codes[attr] = index % n
            index //= n
        return cls(**codes)

    @classmethod
    def all(cls) -> list:
        return [cls.from_index(i) for i in range(cls.count())]

    @classmethod
    def random(cls, rng):
        """Uniformly random record drawn with a ``numpy.random.Generator``."""
        return cls.from_index(int(rng.integers(cls.count())))

    @property
    def index(self) -> int:
        index = 0
        for attr in self._ATTRS:
            index = index * len(ATTRIBUTES[attr]) + getattr(self, attr)
        return index

    def codes(self) -> tuple[int, ...]:
        return tuple(getattr(self, attr) for attr in self._ATTRS)

    def names(self) -> dict[str, str]:
        """Value names, e.g. ``{"shape": "round", "color": "red", ...}``."""
        return {attr: ATTRIBUTES[attr][getattr(self, attr)] for attr in self._ATTRS}

    def words(self) -> dict[str, str]:
        """Caption phrases, e.g. ``{"pattern": "striped", "accessory": "a hat", ...}``."""
        return {attr: WORDS[attr][getattr(self, attr)] for attr in self._ATTRS}


@dataclass(frozen=True)
class Identity(_Record):
    """Hidden identity of one character.  Fields accept value codes or names."""

    shape: int
    color: int
    pattern: int
    eyes: int
    accessory: int

    _ATTRS = IDENTITY_ATTRIBUTES


@dataclass(frozen=True)
class Context(_Record):
    """Prompt-controlled rendering context.  Fields accept value codes or names."""

    background: int
    position: int

    _ATTRS = CONTEXT_ATTRIBUTES


assert tuple(f.name for f in fields(Identity)) == IDENTITY_ATTRIBUTES
assert tuple(f.name for f in fields(Context)) == CONTEXT_ATTRIBUTES

N_IDENTITIES = Identity.count()
N_CONTEXTS = Context.count()
