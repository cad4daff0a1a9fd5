"""The shipped DINOv2 stand-in describes the character, not the scene."""

from __future__ import annotations

from protagonist.sprites.embedder import load_embedder, scene_ari


def test_clusters_of_the_shipped_embedder_do_not_follow_the_background():
    assert scene_ari(load_embedder(), images=60) < 0.1


def test_nearest_neighbour_of_a_render_is_its_own_identity_far_above_chance():
    from protagonist.sprites.embedder import nearest_neighbour_report

    report = nearest_neighbour_report(load_embedder(), identities=100)
    assert report["same identity"] > 0.2  # chance: 1 %
    assert report["color differs"] < 0.1  # what the embedder sees best
    assert set(report) == {"same identity", "shape differs", "color differs", "pattern differs", "eyes differs",
                           "accessory differs"}
