"""OneActor's cluster guidance as a ComfyUI GUIDER, for SamplerCustomAdvanced and any sampler/scheduler."""

from __future__ import annotations

import comfy.samplers
import torch

from ..core.interface import ProtagonistError
from ..core.oneactor.guidance import ClusterGuidance, cluster_guidance, offset_conditionings
from ..core.sampling import StepInfo
from .comfy_backend import ComfyBackend


def step_of(sigma: torch.Tensor, model_options: dict) -> StepInfo:
    """Where in the schedule a prediction is, from the sampler's sigmas ComfyUI puts in transformer_options."""
    sigmas = model_options.get("transformer_options", {}).get("sample_sigmas")
    if sigmas is None:
        raise ProtagonistError("the sampler did not pass its sigmas; use SamplerCustomAdvanced or KSampler")
    sigmas = sigmas.float().cpu()
    value = float(sigma.reshape(-1)[0])
    index = int((sigmas[:-1] - value).abs().argmin())
    return StepInfo(index, len(sigmas) - 1, value, sigmas)


def offset_comfy_conditioning(positive: list, embeds: torch.Tensor) -> list:
    """The same CONDITIONING (ControlNets and all) with its token embeddings replaced by `embeds`."""
    out = []
    for tensor, options in positive:
        if tensor.shape[1:] != embeds.shape[1:]:
            raise ProtagonistError(f"the positive conditioning has shape {tuple(tensor.shape)} but the prompt encodes "
                                   f"to {tuple(embeds.shape)}: connect a conditioning of this same prompt")
        out.append([embeds.to(tensor), options])
    return out


class ClusterGuider(comfy.samplers.CFGGuider):
    """x̂(∅) + η1·[x̂(p, v·Δc_tar) − x̂(∅)] − η2·[x̂(p, Δc̄_aux) − x̂(∅)], then CFG (see core.oneactor)."""

    def __init__(self, model_patcher, settings: ClusterGuidance):
        super().__init__(model_patcher)
        self.settings = settings
        self.rule = cluster_guidance(settings)

    def set_terms(self, negative: list, target: list, aux: list) -> None:
        self.inner_set_conds({"negative": negative, "target": target, "aux": aux})

    def predict_noise(self, x, timestep, model_options={}, seed=None):
        info = step_of(timestep, model_options)
        names = ["negative", "target", "aux"]
        if not (self.settings.in_cluster_phase(info) and self.settings.eta_aux != 0):
            names = names[:2]
        preds = comfy.samplers.calc_cond_batch(self.inner_model, [self.conds[n] for n in names], x, timestep,
                                               model_options)
        return self.rule(torch.stack(preds), info)


def build_guider(backend: ComfyBackend, model, identity, prompt: str, negative: list, settings: ClusterGuidance,
                 positive: list | None = None) -> ClusterGuider:
    with torch.no_grad():
        base = backend.encode_prompts([prompt], word=identity.base_word)
    target, aux = offset_conditionings(base, identity.base_word, identity.delta_target, identity.delta_aux, settings)
    template = positive if positive is not None else backend.to_comfy(base)
    guider = ClusterGuider(model, settings)
    guider.set_terms(negative, offset_comfy_conditioning(template, target.embeds),
                     offset_comfy_conditioning(template, aux.embeds))
    return guider
