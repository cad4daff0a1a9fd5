"""Scores of a method run, read by the sprite world's oracle and embedder."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..sprites.attributes import ATTRIBUTE_NAMES, ATTRIBUTES, CONTEXT_ATTRIBUTES, IDENTITY_ATTRIBUTES
from ..sprites.captions import parse_prompt
from ..sprites.oracle import Oracle, identity_of
from .harness import MethodRun, same_character_pairs
from .stats import character_pairs, pooled_share


@dataclass
class Scores:
    identity_consistency: float  # share of same-character pairs whose five identity attributes all agree
    embedder_distance: float  # mean pairwise embedder distance within a character
    prompt_conformity: float  # share of images whose background and position match the prompt
    subject_conformity: float  # share of images showing the identity attributes the subject names
    validity: float  # share of images the oracle reads with confidence on every attribute
    # per identity attribute: share of same-character pairs that agree on it (which attributes a method holds)
    attribute_consistency: dict[str, float] = field(default_factory=dict)
    # identity consistency over the pairs whose two images the oracle reads: how much of a method's shortfall
    # is disagreement rather than unreadable images
    readable_pair_consistency: float = float("nan")
    # the oracle's reading of each image's identity by name (None: unreadable), in the run's order, for diagnosis
    identities: list = field(default_factory=list)
    # (agreeing pairs, pairs) per character: what `bench.stats` resamples and `bench.pool` pools across runs
    character_pairs: list = field(default_factory=list)
    # per attribute: share of images the oracle reads below its threshold on it (which attributes cost validity)
    unreadable: dict[str, float] = field(default_factory=dict)


def _named(prompt: str, attributes) -> dict[str, int]:
    parsed = parse_prompt(prompt)
    return {a: ATTRIBUTES[a].index(parsed[a]) for a in attributes if a in parsed}


def _share_matching(reading, prompts: list[str], attributes) -> float:
    hits = []
    for i, prompt in enumerate(prompts):
        named = _named(prompt, attributes)
        hits.append(all(int(reading.labels[a][i]) == v for a, v in named.items()))
    return sum(hits) / max(len(hits), 1)


def score(run: MethodRun, oracle: Oracle, embedder=None) -> Scores:
    reading = oracle.read(run.images)
    identities = identity_of(reading)
    pairs = list(same_character_pairs(run.character_of))
    counts = character_pairs(identities, run.character_of)
    readable = [identities[i] == identities[j] for i, j in pairs if identities[i] is not None and identities[j] is not None]
    distance = float("nan")
    if embedder is not None:
        from ..core.embedding import embed_images

        embeddings = embed_images(embedder, run.images)
        distance = float(torch.stack([(embeddings[i] - embeddings[j]).norm() for i, j in pairs]).mean())
    return Scores(
        identity_consistency=pooled_share(counts) if pairs else 0.0,
        embedder_distance=distance,
        prompt_conformity=_share_matching(reading, run.prompts, CONTEXT_ATTRIBUTES),
        subject_conformity=_share_matching(reading, run.prompts, IDENTITY_ATTRIBUTES),
        validity=float(reading.valid.float().mean()),
        attribute_consistency={a: sum(int(reading.labels[a][i]) == int(reading.labels[a][j]) for i, j in pairs)
                               / max(len(pairs), 1) for a in IDENTITY_ATTRIBUTES},
        readable_pair_consistency=sum(readable) / len(readable) if readable else float("nan"),
        identities=[None if identity is None else {a: ATTRIBUTES[a][getattr(identity, a)] for a in IDENTITY_ATTRIBUTES}
                    for identity in identities],
        character_pairs=counts,
        unreadable={a: float((reading.confidences[a] <= reading.threshold).float().mean()) for a in ATTRIBUTE_NAMES},
    )
