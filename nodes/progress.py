"""Progress bar with previews and interrupt checks for long nodes."""

from __future__ import annotations

import comfy.model_management
import comfy.utils
import latent_preview

from ..core.images import line_plot
from ..core.sampling import StepInfo

PREVIEW_SIZE = 512


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


class TrainingProgress:
    """A core training callback `(step, loss)`: progress bar, the loss curve as preview, interrupt checks."""

    def __init__(self, steps: int, previews: int = 20):
        self.bar = comfy.utils.ProgressBar(steps)
        self.every = max(steps // previews, 1)
        self.losses: list[float] = []

    def __call__(self, step: int, loss: float) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        self.losses.append(float(loss))
        preview = None
        if step % self.every == 0 or step + 1 == self.bar.total:
            preview = ("JPEG", line_plot(self.losses, title="loss"), PREVIEW_SIZE)
        self.bar.update_absolute(step + 1, preview=preview)


def count_progress(total: int):
    """A `(done, total)` callback for loops that are not denoising or training (e.g. embedding batches)."""
    bar = comfy.utils.ProgressBar(total)

    def update(done: int, _total: int) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        bar.update_absolute(done)

    return update
