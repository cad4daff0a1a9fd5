"""Clustering and convergence on synthetic embeddings whose answers are known."""

from __future__ import annotations

import pytest
import torch
from protagonist.core.chosen_one.clustering import mean_pairwise_distance, most_cohesive_cluster
from protagonist.core.interface import ProtagonistError


def _blobs(spreads, sizes, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    groups, owners = [], []
    for index, (spread, size) in enumerate(zip(spreads, sizes)):
        centre = torch.zeros(dim)
        centre[index] = 20.0
        groups.append(centre + spread * torch.randn(size, dim, generator=g))
        owners += [index] * size
    return torch.cat(groups), owners


def test_tightest_large_enough_cluster_is_chosen():
    x, owners = _blobs(spreads=[1.0, 0.1, 0.5], sizes=[10, 10, 10])
    choice = most_cohesive_cluster(x, clusters=3, min_size=5)
    assert sorted(choice.sizes) == [10, 10, 10]
    assert {owners[i] for i in choice.indices} == {1} and len(choice.indices) == 10
    assert "chosen" in choice.report()


def test_a_tight_but_small_cluster_is_skipped():
    x, owners = _blobs(spreads=[1.0, 0.05, 0.5], sizes=[12, 3, 12])
    choice = most_cohesive_cluster(x, clusters=3, min_size=5)
    assert {owners[i] for i in choice.indices} == {2}


def test_cosine_metric_ignores_scale():
    x, owners = _blobs(spreads=[0.3, 0.3], sizes=[8, 8])
    scaled = x * torch.linspace(1, 50, x.shape[0])[:, None]
    choice = most_cohesive_cluster(scaled, clusters=2, min_size=4, metric="cosine")
    assert len({owners[i] for i in choice.indices}) == 1


def test_convergence_measure_known_values():
    assert mean_pairwise_distance(torch.tensor([[0.0, 0.0], [3.0, 4.0]])) == pytest.approx(5.0)
    three = torch.tensor([[0.0], [1.0], [3.0]])
    assert mean_pairwise_distance(three) == pytest.approx((1 + 3 + 2) / 3)
    assert mean_pairwise_distance(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), "cosine") == pytest.approx(2 ** 0.5)


def test_too_few_images_for_the_clusters_says_what_to_change():
    with pytest.raises(ProtagonistError, match="at least 20 images"):
        most_cohesive_cluster(torch.randn(10, 4), clusters=4, min_size=5)


def test_no_cluster_reaching_the_minimum_lists_the_sizes(monkeypatch):
    # Unreachable once the count check passes (pigeonhole); the message still matters if it ever fires.
    from protagonist.core.chosen_one import clustering

    monkeypatch.setattr(clustering, "check_cluster_settings", lambda *args: None)
    x, _ = _blobs(spreads=[0.1] * 4, sizes=[3, 3, 3, 11])
    with pytest.raises(ProtagonistError, match=r"sizes were \[") as error:
        most_cohesive_cluster(x, clusters=4, min_size=12)
    assert "min" in str(error.value)


def test_unknown_metric_is_rejected():
    with pytest.raises(ProtagonistError, match="metric"):
        most_cohesive_cluster(torch.randn(10, 4), clusters=2, min_size=2, metric="manhattan")


def test_expansion_takes_in_the_neighbouring_part_of_a_split_character_and_nothing_far():
    g = torch.Generator().manual_seed(0)
    near, beside, far, farther = (torch.zeros(8) for _ in range(4))
    beside[0], far[1], farther[2] = 3.0, 20.0, 20.0
    x = torch.cat([centre + spread * torch.randn(size, 8, generator=g)
                   for centre, spread, size in ((near, 0.5, 8), (beside, 0.5, 8), (far, 0.3, 5), (farther, 0.3, 5))])
    alone = most_cohesive_cluster(x, clusters=4, min_size=6)
    assert len(alone.indices) == 8 and alone.added == []
    grown = most_cohesive_cluster(x, clusters=4, min_size=6, expansion=3.0)
    assert grown.indices == list(range(16))
    assert sorted(grown.added) == sorted(set(range(16)) - set(alone.indices))
    assert "+ 8 images" in grown.report()


def test_expansion_below_one_is_rejected():
    with pytest.raises(ProtagonistError, match="expansion"):
        most_cohesive_cluster(torch.randn(10, 4), clusters=2, min_size=2, expansion=0.5)
