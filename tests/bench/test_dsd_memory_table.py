"""The on-paper DSD memory table: real FLUX.1-dev shapes on the meta device, structural checks only."""

from __future__ import annotations

from protagonist.bench.dsd_memory import FLUX_DEV, comfy_flux_shapes, flux_on_meta, linear_shapes, table
from protagonist.core.backends.flux import FLUX_ATTENTION


def test_table_counts_from_the_real_module_shapes():
    text, numbers = table((16, 128))
    assert text.startswith("| what | bytes |") and "rank 128" in text
    assert numbers["c_embedder_parameters"] == 64 * 3072 + 3072
    assert numbers["flux_parameters"] > 11e9  # FLUX.1-dev is a 12B transformer
    assert 120 <= numbers["implied_release_rank"] <= 136
    model = flux_on_meta()
    targets = linear_shapes(model, FLUX_ATTENTION)
    assert len(targets) == FLUX_DEV["num_layers"] * 8 + FLUX_DEV["num_single_layers"] * 3
    assert len(comfy_flux_shapes()) == FLUX_DEV["num_layers"] * 4 + FLUX_DEV["num_single_layers"] * 2
