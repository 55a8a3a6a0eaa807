"""EdgeFleet control plane: model pipeline, registry, rollouts and fleet ingest."""

__version__ = "0.1.0"
