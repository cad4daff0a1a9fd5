"""Progress bar with previews and interrupt checks for long nodes."""

from __future__ import annotations

import comfy.model_management
import comfy.utils
import latent_preview

from ..core.sampling import StepInfo


class SamplingProgress:
    """A core sampling callback: advances ComfyUI's progress bar, shows the x0 preview, honours interrupt.

    `runs` is how many sampling runs the node makes, so one bar spans the whole node.
    """

    def __init__(self, model_patcher, steps: int, runs: int = 1):
        self.bar = comfy.utils.ProgressBar(steps * runs)
        self.previewer = latent_preview.get_previewer(model_patcher.load_device,
                                                      model_patcher.model.latent_format)
        self.done = 0

    def __call__(self, info: StepInfo, x, denoised) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        self.done += 1
        preview = None
        if self.previewer is not None:
            preview = self.previewer.decode_latent_to_preview_image("JPEG", denoised[:1])
        self.bar.update_absolute(self.done, preview=preview)
