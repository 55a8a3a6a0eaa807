"""The inference backend interface; :mod:`agent.runtime` picks an implementation."""

from __future__ import annotations

from typing import Protocol

import numpy as np
import numpy.typing as npt


class InferenceBackend(Protocol):
    """One loaded model. ``run`` takes a preprocessed batch and returns raw scores.

    ``runtime`` names the library and ``device`` where it runs (an ONNX Runtime
    execution provider, an OpenVINO device, a LiteRT delegate or "CPU").
    """

    runtime: str
    device: str

    def run(self, tensor: npt.NDArray[np.generic]) -> npt.NDArray[np.float32]: ...
