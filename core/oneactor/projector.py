"""The OneActor projector: ResNet stages over the denoiser features → linear → LayerNorm → a word offset.

Sized from the feature shape: at SDXL's 1024 px ([1280, 32, 32]) it is the paper's network (stem
1280→640 with a 7×7 stride-2 conv; residual stages at 640, 640→320 and 320→160, each stride 2; flatten,
Linear and LayerNorm to 2048). Smaller features get proportionally narrower stages and stride only
while there is space left to halve.
"""

from __future__ import annotations

import torch
from torch import nn


class ResidualBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out))
        self.shortcut = nn.Identity() if stride == 1 and c_in == c_out else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


def _stride(size: int) -> int:
    return 2 if size >= 2 else 1


class Projector(nn.Module):
    def __init__(self, channels: int, height: int, width: int, out_width: int):
        super().__init__()
        self.feature_shape = (channels, height, width)
        widths = [max(channels // 2, 8), max(channels // 4, 8), max(channels // 8, 8)]
        stages, size = [], min(height, width)
        s = _stride(size)
        stages += [nn.Conv2d(channels, widths[0], 7, s, 3, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(True)]
        size = -(-size // s)
        stages += [ResidualBlock(widths[0], widths[0]), ResidualBlock(widths[0], widths[0])]
        for c_in, c_out in ((widths[0], widths[1]), (widths[1], widths[2])):
            s = _stride(size)
            stages += [ResidualBlock(c_in, c_out, s), ResidualBlock(c_out, c_out)]
            size = -(-size // s)
        self.stages = nn.Sequential(*stages)
        with torch.no_grad():
            flat = self.stages.eval()(torch.zeros(1, channels, height, width)).numel()
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(flat, out_width), nn.LayerNorm(out_width))
        self.apply(_xavier)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if tuple(features.shape[1:]) != self.feature_shape:
            from ..interface import ProtagonistError

            raise ProtagonistError(
                f"features of shape {tuple(features.shape[1:])} do not fit a projector made for "
                f"{self.feature_shape}: they come from another model or resolution")
        return self.head(self.stages(features))


def _xavier(module: nn.Module) -> None:
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
