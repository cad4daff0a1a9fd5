"""The shipped DINOv2 stand-in describes the character, not the scene."""

from __future__ import annotations

from protagonist.sprites.embedder import load_embedder, scene_ari


def test_clusters_of_the_shipped_embedder_do_not_follow_the_background():
    assert scene_ari(load_embedder(), images=60) < 0.1
