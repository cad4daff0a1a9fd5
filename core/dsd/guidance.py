"""DSD's optional "true" classifier-free guidance with separate image and text scales.

From the second step on the guided prediction is

    x = p(neg, no image) + s_i·[p(neg, image) − p(neg, no image)] + s_t·[p(prompt, image) − p(neg, image)]

and the first step uses p(prompt, image) alone. The weights sum to 1, so the rule reads the same on x0,
noise or velocity predictions. With s_i = s_t = 1 it reduces to p(prompt, image): DSD's default, one
prediction per step. With s_i = 1 the "no image" term cancels and is not computed.

The rule is written once here and used by the core sampler and by the ComfyUI guider; each runs the
terms :meth:`TrueCFG.terms` names and hands the predictions back to :meth:`TrueCFG.combine`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..interface import Conditioning, ProtagonistError
from ..sampling import StepInfo
from .two_frame import ImageSwitch

# Each term: which prompt it uses and whether the reference image is seen.
TERMS = {"no_image": ("negative", False), "negative": ("negative", True), "positive": ("positive", True)}


def true_cfg(no_image: torch.Tensor, negative: torch.Tensor, positive: torch.Tensor, image_scale: float,
             text_scale: float) -> torch.Tensor:
    """p(n, ∅) + s_i·[p(n, I) − p(n, ∅)] + s_t·[p(p, I) − p(n, I)]."""
    return no_image + image_scale * (negative - no_image) + text_scale * (positive - negative)


@dataclass(frozen=True)
class TrueCFG:
    """Image scale s_i and text scale s_t (DSD: s_i 1.0–1.5, s_t 1.0; both 1 = off)."""

    image_scale: float = 1.0
    text_scale: float = 1.0

    def __post_init__(self):
        for name in ("image_scale", "text_scale"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                raise ProtagonistError(f"`{name}` must be a number ≥ 0, got {value!r}")

    @property
    def active(self) -> bool:
        return self.image_scale != 1.0 or self.text_scale != 1.0

    def terms(self, info: StepInfo) -> tuple[str, ...]:
        """The predictions this step needs, by name (keys of :data:`TERMS`)."""
        if info.index == 0 or not self.active:
            return ("positive",)
        if self.image_scale == 1.0:
            return ("negative", "positive")
        return ("no_image", "negative", "positive")

    def combine(self, preds: dict[str, torch.Tensor]) -> torch.Tensor:
        """The guided prediction from the predictions of :meth:`terms`."""
        if "negative" not in preds:
            return preds["positive"]
        no_image = preds.get("no_image", preds["negative"])  # only absent when s_i = 1, where it cancels
        return true_cfg(no_image, preds["negative"], preds["positive"], self.image_scale, self.text_scale)


DSD_DEFAULT = TrueCFG()  # both scales 1: distilled guidance only


class TrueCFGSampling:
    """The rule for the core sampler: per step, the conditionings (one batched pass) and the guidance.

    `conds(info)` also sets `switch`, so the "no image" entry of the batch gets no `c_embedder` term;
    use the same switch in :func:`~protagonist.core.dsd.two_frame.conditioned`.
    """

    def __init__(self, settings: TrueCFG, negative: Conditioning | None, positive: Conditioning,
                 switch: ImageSwitch):
        if settings.active and negative is None:
            raise ProtagonistError("true CFG (image or text guidance ≠ 1) needs a negative prompt conditioning")
        self.settings, self.switch = settings, switch
        self.by_prompt = {"negative": negative, "positive": positive}

    def conds(self, info: StepInfo) -> list[Conditioning]:
        names = self.settings.terms(info)
        self.switch.flags = [TERMS[name][1] for name in names]
        return [self.by_prompt[TERMS[name][0]] for name in names]

    def guidance(self, preds: torch.Tensor, info: StepInfo) -> torch.Tensor:
        return self.settings.combine(dict(zip(self.settings.terms(info), preds)))
