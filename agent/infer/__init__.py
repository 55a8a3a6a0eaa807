"""The inference loop and the model it runs."""

from agent.infer.engine import InferenceEngine, LoadedModel, load_model

__all__ = ["InferenceEngine", "LoadedModel", "load_model"]
