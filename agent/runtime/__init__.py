"""Inference backends behind one interface."""

from agent.runtime.base import InferenceBackend, RuntimeLoadError, load_backend
from agent.runtime.onnx import OnnxRuntimeBackend

__all__ = ["InferenceBackend", "OnnxRuntimeBackend", "RuntimeLoadError", "load_backend"]
