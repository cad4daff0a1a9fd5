"""`panel_reliance`: how much a denoiser reads a grid's other panels."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from protagonist.core.schedules import FlowSchedule


class PanelDenoiser:
    """A stand-in denoiser on 4×-pooled pixels: the top-left panel's x0 is read from the top-left panel
    itself, or (`reads_others`) from the mean of the other three panels."""

    def __init__(self, reads_others: bool):
        self.schedule, self.reads_others = FlowSchedule(), reads_others

    def encode_prompts(self, prompts, image_size=None):
        return None

    def encode_images(self, images):
        return F.avg_pool2d(images * 2 - 1, 4)

    def predict(self, x, sigma, conds):
        h, w = x.shape[-2] // 2, x.shape[-1] // 2
        source = x[..., :h, :w]
        if self.reads_others:
            source = (x[..., :h, w:] + x[..., h:, :w] + x[..., h:, w:]) / 3
        denoised = x.clone()
        denoised[..., :h, :w] = source * (1 - sigma)[:, None, None, None]
        return denoised.unsqueeze(0)


def test_a_denoiser_that_draws_each_panel_alone_does_not_rely_on_the_others():
    from protagonist.bench.grids import panel_reliance

    ratios = panel_reliance(PanelDenoiser(reads_others=False), sigmas=(0.9, 0.5), grids=8)
    assert ratios == {0.9: 1.0, 0.5: 1.0}


def test_a_denoiser_that_reads_the_other_panels_errs_more_when_they_show_another_character():
    from protagonist.bench.grids import panel_reliance

    ratios = panel_reliance(PanelDenoiser(reads_others=True), sigmas=(0.5, 0.1), grids=16)
    assert ratios[0.1] > ratios[0.5] > 1.01, ratios  # the less noise, the more the other characters show
