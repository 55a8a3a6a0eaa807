"""What each job kind does: the pipeline and governance functions, with progress and cancel.

A handler takes the job's params (the request the API validated), reports through a
:class:`Reporter` and returns the result to store. Torch and the pipeline are imported
inside the handlers: the API and CLI import this module for the validation helpers and
keep torch out of their start-up.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine

from cloud.core.config import Settings
from cloud.jobs import store

if TYPE_CHECKING:
    from agent.contract import PreprocessSpec
    from cloud.pipeline.evaluate.gates import ValidationThresholds
    from cloud.pipeline.train.trainer import EpochCallback, TrainConfig

__all__ = ["HANDLERS", "JobCancelled", "Reporter", "train_setup"]


class JobCancelled(Exception):
    """Raised at a progress report once a cancel was requested; the runner ends the job ``cancelled``."""


@dataclass
class Reporter:
    engine: Engine
    job_id: str

    def progress(self, fraction: float, message: str) -> None:
        """Record progress; raises :class:`JobCancelled` when the job was asked to stop."""
        if store.report_progress(self.engine, self.job_id, fraction, message):
            raise JobCancelled(f"job {self.job_id} cancelled at: {message}")

    def log(self, line: str) -> None:
        store.append_log(self.engine, self.job_id, line)

    def epochs(self, start: float, end: float) -> EpochCallback:
        """An ``on_epoch`` callback for the trainer that maps its epochs onto ``start..end`` of the job."""

        def on_epoch(done: int, total: int, loss: float) -> None:
            self.progress(start + (end - start) * done / total, f"epoch {done}/{total} loss {loss:.3f}")

        return on_epoch


def train_setup(params: dict[str, Any]) -> tuple[TrainConfig, PreprocessSpec, ValidationThresholds]:
    """The trainer's config, input spec and gate from a train request.

    Raises:
        ValueError: an unknown profile or architecture, or values the trainer refuses.
    """
    from agent.profiles import load_profiles
    from cloud.pipeline.evaluate.gates import ValidationThresholds
    from cloud.pipeline.train.trainer import DEFAULT_SPEC, TrainConfig, spec_for_input_size

    overrides: dict[str, Any] = {key: params[key] for key in ("epochs", "batch_size", "learning_rate", "seed")
                                 if params.get(key) is not None}
    if params.get("width_multiplier") is not None:
        overrides["width_multiplier"] = params["width_multiplier"]
    if params.get("architecture") is not None:
        overrides["architecture"] = params["architecture"]
    profile_name = params.get("profile")
    if profile_name is not None:
        profiles = load_profiles()
        if profile_name not in profiles:
            raise ValueError(f"unknown profile {profile_name!r}; known: {', '.join(sorted(profiles))}")
        config = TrainConfig.for_profile(profiles[profile_name], **overrides)
        spec = spec_for_input_size(params.get("input_size") or profiles[profile_name].input_size)
    else:
        config = TrainConfig(**overrides)
        spec = spec_for_input_size(params["input_size"]) if params.get("input_size") else DEFAULT_SPEC
    thresholds = ValidationThresholds(
        **{key: params[key] for key in ("min_accuracy", "min_slice_accuracy", "max_regression_pp") if key in params})
    return config, spec, thresholds


def _paths(settings: Settings) -> Any:
    from cloud.pipeline.service import PipelinePaths

    return PipelinePaths.under(settings.data_dir)


def run_train(engine: Engine, settings: Settings, params: dict[str, Any], reporter: Reporter) -> dict[str, Any]:
    from cloud.pipeline.service import train_model

    config, spec, thresholds = train_setup(params)
    reporter.progress(0.0, f"training {params['name']} on {params['dataset_id']} for {config.epochs} epochs")
    outcome = train_model(engine, _paths(settings), dataset_id=params["dataset_id"], name=params["name"],
                          config=config, spec=spec, thresholds=thresholds, show_progress=False,
                          on_epoch=reporter.epochs(0.0, 0.95))
    reporter.log(f"{outcome.model_version}: {outcome.status}")
    return {"model_version": outcome.model_version, "status": outcome.status,
            "accuracy": outcome.evaluation.accuracy if outcome.evaluation else None,
            "reasons": outcome.decision.reasons, "notes": outcome.decision.notes}


def run_build(engine: Engine, settings: Settings, params: dict[str, Any], reporter: Reporter) -> dict[str, Any]:
    from cloud.pipeline.evaluate.gates import QuantizationGateConfig
    from cloud.pipeline.service import build_model

    reporter.progress(0.0, f"building {params['version']} for {', '.join(params['profiles'])}")
    overrides = {key: params.get(key) for key in ("calibration_method", "per_channel")}
    result = build_model(engine, _paths(settings), version=params["version"], profiles=params["profiles"],
                         quantization_overrides={k: v for k, v in overrides.items() if v is not None},
                         gate=QuantizationGateConfig(max_accuracy_drop_pp=params.get("max_accuracy_drop_pp", 1.0)),
                         calibration_images=params.get("calibration_images", 128),
                         allow_unvalidated=params.get("allow_unvalidated", False))
    reporter.log(f"build {result.build_id}: package {result.package_id}")
    return {"build_id": result.build_id, "model_version": result.model_version, "package_id": result.package_id,
            "package_ids": [result.package_id] if result.package_id else [],
            "artifacts": [a.summary() for a in result.outcome.artifacts], "notes": result.notes}


def run_import(engine: Engine, settings: Settings, params: dict[str, Any], reporter: Reporter) -> dict[str, Any]:
    from cloud.pipeline.service import ingest

    reporter.progress(0.0, f"importing {params['path']}")
    record = ingest(engine, _paths(settings), Path(params["path"])).record
    reporter.log(f"dataset {record.id}")
    return {"dataset_id": record.id, "dataset": record.model_dump(mode="json")}


def run_retrain(engine: Engine, settings: Settings, params: dict[str, Any], reporter: Reporter) -> dict[str, Any]:
    from cloud.governance.proposals import proposal_detail
    from cloud.governance.retrain import RetrainSettings, retrain

    # No epochs given: 6 for a classifier, the base model's own for a detector.
    epochs = params.get("epochs")
    config = RetrainSettings(datasets_dir=settings.data_dir / "datasets", models_dir=settings.models_dir,
                             packages_dir=settings.packages_dir, epochs=epochs or 6, detector_epochs=epochs,
                             builds_dir=_paths(settings).builds_dir,
                             auto_approve=settings.monitor.auto_approve_rollouts,
                             min_reference_samples=settings.monitor.min_reference_samples)
    reporter.progress(0.0, f"retraining proposal {params['proposal_id']}"
                           + (f" for {epochs} epochs" if epochs else ""))
    proposal = retrain(engine, params["proposal_id"], config, actor=params.get("actor", "operator"),
                       on_epoch=reporter.epochs(0.05, 0.9))
    detail: dict[str, Any] = proposal_detail(proposal)
    reporter.log(f"proposal {proposal.id}: {proposal.state}")
    return {"proposal_id": proposal.id, "state": proposal.state, "model_version": proposal.new_model_version,
            "package_ids": [proposal.new_package_id] if proposal.new_package_id else [], "proposal": detail}


Handler = Callable[[Engine, Settings, dict[str, Any], Reporter], dict[str, Any]]
HANDLERS: dict[str, Handler] = {"train": run_train, "build": run_build, "import": run_import,
                                "retrain": run_retrain}
