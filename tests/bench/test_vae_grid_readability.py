"""Grid scoring helpers on the shipped sprite models."""

from __future__ import annotations


def test_the_shipped_flux_vae_codes_a_grid_as_well_as_its_panels():
    from protagonist.bench.grids import vae_grid_readability
    from protagonist.sprites.models import load_sprite_model
    from protagonist.sprites.oracle import Oracle

    readable = vae_grid_readability(load_sprite_model("flux"), Oracle.load(), grids=8)
    assert readable["as grids"] >= 0.9 and readable["one by one"] >= 0.9
