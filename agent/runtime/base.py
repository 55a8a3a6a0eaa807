"""The inference backend interface and the loader that picks an implementation."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from agent.contract.manifest import ModelArtifact


class RuntimeLoadError(RuntimeError):
    """The runtime is missing on this device or refused to load the model."""


class InferenceBackend(Protocol):
    """One loaded model. ``run`` takes a preprocessed batch and returns raw scores."""

    runtime: str

    def run(self, tensor: npt.NDArray[np.generic]) -> npt.NDArray[np.float32]: ...


def load_backend(artifact: ModelArtifact, model_path: Path, *, threads: int = 0) -> InferenceBackend:
    """Load ``model_path`` with the runtime ``artifact`` names.

    Raises:
        RuntimeLoadError: the runtime is not installed or cannot load the file.
    """
    if artifact.runtime == "onnxruntime":
        from agent.runtime.onnx import OnnxRuntimeBackend

        return OnnxRuntimeBackend(model_path, artifact, threads=threads)
    raise RuntimeLoadError(f"runtime {artifact.runtime!r} is not supported by this agent build")
