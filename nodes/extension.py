"""The one place where our nodes are registered with ComfyUI."""

from __future__ import annotations

from comfy_api.v0_0_2 import ComfyExtension, io

from .chosen_one import DINOv2Embed, KMeansCohesiveCluster
from .chosen_one_training import ChosenOneLoop, LoraTITrainer
from .dsd import GridPairSplitter, LoadDSD, PairFilter
from .dsd_sampler import TwoFrameDiTSampler
from .dsd_training import TwoFrameTrainer
from .model_folders import register_folders
from .oneactor import ClusterGuidedSampler, OneActorProjectorTrainer
from .oneactor_io import LoadOneActorIdentity, OneActorSampler, SaveOneActorIdentity
from .proposals import ProposalSampler


class ProtagonistExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        # ComfyUI 0.3.x never calls on_load, but asks for the node list exactly once at start-up.
        register_folders()
        return [ProposalSampler, DINOv2Embed, KMeansCohesiveCluster, LoraTITrainer, ChosenOneLoop,
                OneActorProjectorTrainer, ClusterGuidedSampler, OneActorSampler, SaveOneActorIdentity,
                LoadOneActorIdentity, GridPairSplitter, PairFilter, LoadDSD, TwoFrameDiTSampler, TwoFrameTrainer]
