"""Models shared by cameras: one :class:`ModelGroup` per model a device serves.

Cameras assigned the same model (``model:`` in a pipeline's config) share one loaded
instance, one A/B install and one deploy target; its engine batches their frames. A
camera with no ``model:`` gets a group of its own, named like it (the one-camera case).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.infer.batcher import BatchSettings
from agent.infer.engine import InferenceEngine


@dataclass
class ModelGroup:
    """One shared model: its name (the deploy target), its engine and the cameras it serves."""

    name: str
    engine: InferenceEngine
    cameras: list[str] = field(default_factory=list)

    @classmethod
    def create(cls, name: str, batching: BatchSettings) -> ModelGroup:
        return cls(name=name, engine=InferenceEngine(name=name, batching=batching))
