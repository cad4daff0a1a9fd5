"""Sprite world: a tiny procedural world of characters ("blobs") with hidden identity
attributes, rendered at 32x32 in prompt-controlled contexts, plus an attribute oracle.

See :mod:`protagonist.sprites.world` (rendering, captions, datasets) and
:mod:`protagonist.sprites.oracle` (the classifier that reads rendered or generated images).
"""

from .world import (  # noqa: F401
    ATTRIBUTE_NAMES,
    ATTRIBUTES,
    CLASS_WORD,
    CONTEXT_ATTRIBUTES,
    IDENTITY_ATTRIBUTES,
    N_CONTEXTS,
    N_IDENTITIES,
    VOCABULARY,
    WORDS,
    Context,
    Identity,
    Label,
    caption,
    grid_caption,
    make_dataset,
    parse_prompt,
    random_caption,
    random_grid_caption,
    render,
    render_batch,
    render_grid,
    split_grid,
)
