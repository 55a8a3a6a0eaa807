"""Regenerate ``tiny_softmax_classifier.tflite``: a 3-class classifier ending in Softmax.

Run with the LiteRT converter environment (litert-torch), from the repository root:

    $EDGEFLEET_LITERT_PYTHON tests/pipeline/data/make_tiny_tflite.py

Input 1x3x32x32 float32 (NCHW, as litert-torch keeps PyTorch's layout), output 1x3
probabilities. The weights are fixed by the seed so the file is reproducible.
"""

from __future__ import annotations

from pathlib import Path

import litert_torch
import torch
from torch import nn

OUT = Path(__file__).with_name("tiny_softmax_classifier.tflite")


class TinySoftmaxClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.relu(self.conv(x)).mean(dim=(2, 3))
        return torch.softmax(self.head(pooled) * 4.0, dim=1)


def main() -> None:
    torch.manual_seed(7)
    model = TinySoftmaxClassifier().eval()
    litert_torch.convert(model, (torch.zeros(1, 3, 32, 32),)).export(str(OUT))
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
