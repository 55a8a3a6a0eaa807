"""A MobileNetV2-style classifier (Sandler et al., 2018) with a width multiplier.

Two depths: ``mobilenetv2`` is the paper's 17-block stack (for 160-224 px inputs on
real devices); ``compact`` keeps the same inverted-residual blocks but stops at
stride 16 with fewer repeats, so that the demo trains in well under a minute on
two CPU cores at 64 px. Both export to plain Conv/Add/Clip graphs that every
runtime (ONNX Runtime, OpenVINO, LiteRT) and every quantizer handles.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

Architecture = Literal["mobilenetv2", "compact"]

# (expansion t, output channels c, repeats n, first stride s), as in the paper's table 2.
_MOBILENETV2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                       (6, 160, 3, 2), (6, 320, 1, 1))
_COMPACT_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 2, 2), (6, 64, 2, 2), (6, 96, 1, 1))


def _make_divisible(channels: float, divisor: int = 8) -> int:
    # Channel counts that are multiples of 8 vectorise well on every CPU and accelerator.
    rounded = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * channels else rounded


def _conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(out_ch)]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_ch * expansion
        self.use_residual = stride == 1 and in_ch == out_ch
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(_conv_bn(in_ch, hidden, 1, 1))
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden), _conv_bn(hidden, out_ch, 1, 1, act=False)]
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.block(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    """``width_multiplier`` scales every layer's channels (the paper's alpha)."""

    def __init__(self, num_classes: int, width_multiplier: float = 1.0, architecture: Architecture = "mobilenetv2",
                 dropout: float = 0.2) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError("a classifier needs at least two classes")
        if width_multiplier <= 0:
            raise ValueError("width_multiplier must be positive")
        stages = _MOBILENETV2_STAGES if architecture == "mobilenetv2" else _COMPACT_STAGES
        channels = _make_divisible(32 * width_multiplier)
        # The paper keeps the last layer at 1280 for alpha <= 1; the compact variant scales it down.
        last = 1280 if architecture == "mobilenetv2" else 256
        last_channels = _make_divisible(last * max(1.0, width_multiplier))
        layers: list[nn.Module] = [_conv_bn(3, channels, 3, 2)]
        for expansion, out, repeats, first_stride in stages:
            out_ch = _make_divisible(out * width_multiplier)
            for index in range(repeats):
                layers.append(InvertedResidual(channels, out_ch, first_stride if index == 0 else 1, expansion))
                channels = out_ch
        layers.append(_conv_bn(channels, last_channels, 1, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last_channels, num_classes))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0, 0.01)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.features(x).mean(dim=(2, 3))
        logits: torch.Tensor = self.classifier(pooled)
        return logits
