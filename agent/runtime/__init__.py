"""Inference backends behind one interface, and runtime selection by measurement."""

from agent.runtime.base import InferenceBackend, RuntimeLoadError, available_devices, load_backend
from agent.runtime.select import Candidate, fastest, golden_error, plan_candidates, self_test, time_backend

__all__ = ["Candidate", "InferenceBackend", "RuntimeLoadError", "available_devices", "fastest", "golden_error",
           "load_backend", "plan_candidates", "self_test", "time_backend"]
