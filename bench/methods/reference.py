"""The ceiling row: every prompt names the character's full identity, so no method is needed to hold it.

If the model cannot keep one identity even when told all five attributes, no method can reach more
consistency than this row shows; it tells a weak method apart from a weak sprite model.
"""

from __future__ import annotations

import numpy as np

from ...sprites.attributes import ATTRIBUTES, IDENTITY_ATTRIBUTES, Identity
from ...sprites.captions import blob_phrase, parse_prompt
from ..harness import draw


def identity_for(subject: str, seed: int) -> Identity:
    """A random identity that has every attribute the subject names."""
    named = parse_prompt(subject)
    rng = np.random.default_rng(seed)
    codes = {a: ATTRIBUTES[a].index(named[a]) if a in named else int(rng.integers(len(ATTRIBUTES[a])))
             for a in IDENTITY_ATTRIBUTES}
    return Identity(**codes)


class NamedIdentity:
    """Prompts rewritten to name all identity attributes before the class word."""

    name = "named-identity"

    def prepare(self, backend, character, seed):
        return character.subject, blob_phrase(identity_for(character.subject, seed), IDENTITY_ATTRIBUTES,
                                              prenominal=True)

    def generate(self, backend, state, prompts, seeds, settings):
        subject, full = state
        rewritten = [full + prompt[len(subject):] for prompt in prompts]
        return draw(backend, rewritten, seeds, settings)
