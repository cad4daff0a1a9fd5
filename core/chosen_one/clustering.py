"""K-MEANS++ over image embeddings, the most cohesive cluster, and the convergence measure."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..interface import ProtagonistError

METRICS = ("euclidean", "cosine")


def _prepare(embeddings: torch.Tensor, metric: str) -> np.ndarray:
    if metric not in METRICS:
        raise ProtagonistError(f"`metric` must be one of {METRICS}, got {metric!r}")
    x = embeddings.detach().float().cpu()
    if metric == "cosine":
        x = torch.nn.functional.normalize(x, dim=-1)
    return x.numpy()


def mean_pairwise_distance(embeddings: torch.Tensor, metric: str = "euclidean") -> float:
    """The convergence measure: mean distance over all pairs of embeddings."""
    x = torch.from_numpy(_prepare(embeddings, metric))
    if x.shape[0] < 2:
        return 0.0
    distances = torch.cdist(x, x)
    n = x.shape[0]
    return float(distances.sum() / (n * (n - 1)))


@dataclass
class ClusterChoice:
    labels: list[int]  # cluster of every embedding
    sizes: list[int]
    cohesion: list[float]  # mean distance of a cluster's members to its centroid (lower = tighter)
    chosen: int
    indices: list[int]  # members of the chosen cluster, and the images `expansion` added to it
    added: list[int] = field(default_factory=list)  # images of other clusters taken in by `expansion`

    def report(self) -> str:
        rows = [f"cluster {c}: {self.sizes[c]} images, cohesion {self.cohesion[c]:.4f}"
                + (" ← chosen" if c == self.chosen else "") for c in range(len(self.sizes))]
        if self.added:
            rows.append(f"+ {len(self.added)} images of other clusters within the chosen one's reach")
        return "\n".join(rows)


def check_cluster_settings(count: int, clusters: int, min_size: int) -> None:
    if clusters < 1 or min_size < 1:
        raise ProtagonistError(f"`clusters` and `min_cluster_size` must be at least 1, got {clusters}, {min_size}")
    if count < clusters * min_size:
        raise ProtagonistError(
            f"{count} images cannot fill {clusters} clusters of at least {min_size}: generate at least "
            f"{clusters * min_size} images, or lower `clusters` or `min_cluster_size`")


def most_cohesive_cluster(embeddings: torch.Tensor, clusters: int, min_size: int, metric: str = "euclidean",
                          seed: int = 0, expansion: float = 1.0) -> ClusterChoice:
    """K-MEANS++ into `clusters` groups; among groups of at least `min_size`, the tightest one.

    `expansion` above 1 also takes every image of another cluster lying within that multiple of the chosen
    cluster's radius (its farthest member's distance to its centroid): once most proposals show one character,
    K-MEANS splits it over several clusters, and the training set need not be only one of those parts.
    """
    if expansion < 1:
        raise ProtagonistError(f"`expansion` must be at least 1 (1 = the cluster alone), got {expansion}")
    from sklearn.cluster import KMeans

    check_cluster_settings(embeddings.shape[0], clusters, min_size)
    x = _prepare(embeddings, metric)
    kmeans = KMeans(n_clusters=clusters, init="k-means++", n_init=10, random_state=seed).fit(x)
    labels = kmeans.labels_.tolist()
    sizes = [labels.count(c) for c in range(clusters)]
    cohesion = []
    for c in range(clusters):
        members = x[kmeans.labels_ == c]
        cohesion.append(float(np.linalg.norm(members - kmeans.cluster_centers_[c], axis=1).mean()) if len(members)
                        else float("inf"))
    eligible = [c for c in range(clusters) if sizes[c] >= min_size]
    if not eligible:
        raise ProtagonistError(
            f"no cluster reached the minimum size {min_size}: the sizes were {sorted(sizes, reverse=True)}. "
            f"Lower `min_cluster_size`, use fewer clusters, or generate more images")
    chosen = min(eligible, key=lambda c: cohesion[c])
    members = [i for i, c in enumerate(labels) if c == chosen]
    added = _within_reach(x, members, kmeans.cluster_centers_[chosen], expansion) if expansion > 1 else []
    return ClusterChoice(labels, sizes, cohesion, chosen, sorted(members + added), added)


def _within_reach(x: np.ndarray, members: list[int], centre: np.ndarray, expansion: float) -> list[int]:
    distances = np.linalg.norm(x - centre, axis=1)
    reach = expansion * distances[members].max()
    member_set = set(members)
    return [i for i in range(len(x)) if i not in member_set and distances[i] <= reach]
