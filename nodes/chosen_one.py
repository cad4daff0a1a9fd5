"""The Chosen One as ComfyUI nodes: embed, cluster, train LoRA + token, and the whole loop."""

from __future__ import annotations

import json

import torch
from comfy_api.v0_0_2 import io

from ..core.chosen_one.clustering import METRICS, mean_pairwise_distance, most_cohesive_cluster
from ..core.embedding import embed_images, load_dinov2
from ..core.images import line_plot, pil_to_tensor
from .convert import images_to_comfy, images_to_core
from .model_folders import dinov2_source
from .progress import count_progress

Embeddings = io.Custom("PROTAGONIST_EMBEDDINGS")
_DINOV2_CACHE: dict[str, torch.nn.Module] = {}


def cached_dinov2(name: str):
    """DINOv2 models stay loaded between runs (explicit module-level cache; nodes hold no state)."""
    source = dinov2_source(name)
    if source not in _DINOV2_CACHE:
        import comfy.model_management

        _DINOV2_CACHE[source] = load_dinov2(source, comfy.model_management.get_torch_device())
    return _DINOV2_CACHE[source]


def loss_curve_image(losses: list[float]) -> torch.Tensor:
    return images_to_comfy(pil_to_tensor(line_plot(losses, title="loss"))[None])


class DINOv2Embed(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="Protagonist_DINOv2Embed", display_name="DINOv2 Embed (Protagonist)",
            category="Protagonist/The Chosen One",
            description="CLS-token embeddings of images with DINOv2, for clustering by identity.",
            inputs=[
                io.Image.Input("images", tooltip="The images to embed (a batch)."),
                io.String.Input("dinov2", default="dinov2-large",
                                tooltip="A folder in models/dinov2 (config.json + model.safetensors) or a hub id."),
                io.Int.Input("resolution", default=0, min=0, max=1024, step=14,
                             tooltip="Side the images are resized to; 0 uses the model's own (518 for DINOv2)."),
            ],
            outputs=[Embeddings.Output(display_name="embeddings")],
        )

    @classmethod
    def execute(cls, images, dinov2, resolution) -> io.NodeOutput:
        model = cached_dinov2(dinov2)
        progress = count_progress(images.shape[0])
        return io.NodeOutput(embed_images(model, images_to_core(images), resolution or None, callback=progress))


class KMeansCohesiveCluster(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="Protagonist_KMeansCohesiveCluster", display_name="K-Means Cohesive Cluster (Protagonist)",
            category="Protagonist/The Chosen One",
            description="K-MEANS++ on the embeddings; returns the tightest cluster that is large enough.",
            inputs=[
                Embeddings.Input("embeddings", tooltip="From DINOv2 Embed, one per image."),
                io.Image.Input("images", tooltip="The same images, in the same order."),
                io.Int.Input("clusters", default=6, min=1, max=64, tooltip="K, the number of clusters (paper: N/20)."),
                io.Int.Input("min_cluster_size", default=11, min=1, max=1024,
                             tooltip="Clusters smaller than this are never chosen (paper: more than 10)."),
                io.Combo.Input("metric", options=list(METRICS), default="euclidean",
                               tooltip="Distance between embeddings."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFF, tooltip="Seed of K-MEANS++."),
                io.Float.Input("expansion", default=1.0, min=1.0, max=4.0, step=0.05, optional=True,
                               tooltip="Above 1, also take the images of other clusters within this multiple of "
                                       "the chosen cluster's radius. Useful once the proposals come from a learned "
                                       "token and mostly show one character; 1 = the cluster alone (paper)."),
            ],
            outputs=[io.Image.Output(display_name="cluster"), io.String.Output(display_name="indices"),
                     io.String.Output(display_name="report"), io.Float.Output(display_name="spread")],
        )

    @classmethod
    def execute(cls, embeddings, images, clusters, min_cluster_size, metric, seed, expansion=1.0) -> io.NodeOutput:
        if embeddings.shape[0] != images.shape[0]:
            raise ValueError(f"{embeddings.shape[0]} embeddings but {images.shape[0]} images: embed the same batch")
        choice = most_cohesive_cluster(embeddings, clusters, min_cluster_size, metric, seed, expansion)
        spread = mean_pairwise_distance(embeddings, metric)
        report = choice.report() + f"\nmean pairwise distance of all {len(embeddings)}: {spread:.4f}"
        return io.NodeOutput(images[choice.indices], json.dumps(choice.indices), report, spread)
