"""Model registry routes: list, lineage, train, import, build, promote.

Training and builds run inside the request (small models, minutes at most); the
response carries the gate decision and the artifacts with their hashes.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, HTTPException, UploadFile
from fastapi import Path as PathParam
from pydantic import BaseModel, Field

from agent.contract import PreprocessSpec
from agent.profiles import load_profiles
from cloud.api.deps import ActorDep, PlaneDep, SessionDep
from cloud.core.ids import DATASET_ID, SAFE_ID
from cloud.fleet import crud
from cloud.fleet.tables import ModelVersionPublic
from cloud.pipeline.evaluate.gates import QuantizationGateConfig, ValidationThresholds

router = APIRouter(prefix="/models", tags=["models"])
# Model versions name directories (models/<name>/<version>): checked before any lookup.
VersionParam = Annotated[str, PathParam(pattern=SAFE_ID, max_length=200)]
UPLOAD_CHUNK_BYTES = 1024 * 1024


@contextmanager
def user_errors() -> Iterator[None]:
    """Bad input from the caller (``ValueError``, incl. ``PipelineInputError``) → HTTP 400 with the message."""
    try:
        yield
    except crud.NotFound:
        raise
    except ValueError as exc:
        raise HTTPException(status_code=400, detail=str(exc)) from None


def _paths(plane: Any) -> Any:
    # Imported here: it pulls in torch, which the API and CLI keep out of start-up.
    from cloud.pipeline.service import PipelinePaths

    return PipelinePaths.under(plane.settings.data_dir)


class TrainRequest(BaseModel):
    dataset_id: str = Field(min_length=1, max_length=80, pattern=DATASET_ID)
    name: str = Field(default="shapes", min_length=1, max_length=100, pattern=SAFE_ID)
    profile: str | None = Field(default=None, description="take width and input size from this firmware profile")
    input_size: int | None = Field(default=None, ge=16, le=1024)
    width_multiplier: float | None = Field(default=None, gt=0, le=2)
    architecture: Literal["mobilenetv2", "compact"] | None = None
    epochs: int = Field(default=8, ge=1, le=500)
    batch_size: int = Field(default=16, ge=2, le=1024)
    learning_rate: float = Field(default=2e-2, gt=0)
    seed: int = 0
    min_accuracy: float = Field(default=0.8, ge=0, le=1)
    min_slice_accuracy: float = Field(default=0.7, ge=0, le=1)
    max_regression_pp: float = Field(default=1.0, ge=0)


class BuildRequestBody(BaseModel):
    profiles: list[str] = Field(min_length=1)
    calibration_method: Literal["minmax", "entropy", "percentile"] | None = None
    per_channel: bool | None = None
    calibration_images: int = Field(default=128, ge=1, le=10_000)
    max_accuracy_drop_pp: float = Field(default=1.0, ge=0)
    allow_unvalidated: bool = False


def _outcome(outcome: Any) -> dict[str, Any]:
    return {"model_version": outcome.model_version, "status": outcome.status,
            "accuracy": outcome.evaluation.accuracy if outcome.evaluation else None,
            "reasons": outcome.decision.reasons, "notes": outcome.decision.notes}


def _build(result: Any) -> dict[str, Any]:
    return {"build_id": result.build_id, "model_version": result.model_version, "package_id": result.package_id,
            "artifacts": [a.summary() for a in result.outcome.artifacts], "notes": result.notes}


@router.get("", response_model=list[ModelVersionPublic])
def list_models(session: SessionDep):  # type: ignore[no-untyped-def]
    return crud.list_model_versions(session)


@router.post("/train", status_code=201)
def train_model(body: TrainRequest, plane: PlaneDep) -> dict[str, Any]:
    """Train on an ingested dataset, evaluate, gate (validated/rejected) and register with lineage."""
    # Imported here: it pulls in torch, which the API and CLI keep out of start-up.
    from cloud.pipeline.service import train_model as run_training
    from cloud.pipeline.train.trainer import DEFAULT_SPEC, TrainConfig, spec_for_input_size

    with user_errors():
        overrides: dict[str, Any] = {"epochs": body.epochs, "batch_size": body.batch_size,
                                     "learning_rate": body.learning_rate, "seed": body.seed}
        if body.width_multiplier is not None:
            overrides["width_multiplier"] = body.width_multiplier
        if body.architecture is not None:
            overrides["architecture"] = body.architecture
        if body.profile is not None:
            profiles = load_profiles()
            if body.profile not in profiles:
                raise ValueError(f"unknown profile {body.profile!r}; known: {', '.join(sorted(profiles))}")
            config = TrainConfig.for_profile(profiles[body.profile], **overrides)
            spec = spec_for_input_size(body.input_size or profiles[body.profile].input_size)
        else:
            config = TrainConfig(**overrides)
            spec = spec_for_input_size(body.input_size) if body.input_size else DEFAULT_SPEC
        outcome = run_training(plane.engine, _paths(plane), dataset_id=body.dataset_id, name=body.name,
                               config=config, spec=spec, show_progress=False,
                               thresholds=ValidationThresholds(min_accuracy=body.min_accuracy,
                                                               min_slice_accuracy=body.min_slice_accuracy,
                                                               max_regression_pp=body.max_regression_pp))
    return _outcome(outcome)


@router.post("/import", status_code=201)
def import_model(
    plane: PlaneDep,
    model: Annotated[UploadFile, File(description="ONNX classifier")],
    labels: Annotated[str, Form(description="labels: a JSON list or one per line")],
    preprocessing: Annotated[str, Form(description="PreprocessSpec as JSON")],
    name: Annotated[str, Form(min_length=1, max_length=100, pattern=SAFE_ID)],
    dataset_id: Annotated[str | None, Form(pattern=f"{DATASET_ID}|^$")] = None,
    profiles: Annotated[str | None, Form(description="comma-separated profiles to build for")] = None,
) -> dict[str, Any]:
    """Import an external ONNX model; with a dataset it is evaluated and gated, with profiles also built."""
    # Imported here: it pulls in torch, which the API and CLI keep out of start-up.
    from cloud.pipeline.service import build_model, read_labels
    from cloud.pipeline.service import import_model as run_import

    plane.settings.uploads_dir.mkdir(parents=True, exist_ok=True)
    # Scratch space in the data directory, not /tmp: the upload may be large, and it is
    # copied in chunks, never held whole in memory.
    with user_errors(), tempfile.TemporaryDirectory(dir=plane.settings.uploads_dir) as scratch:
        try:
            spec = PreprocessSpec.model_validate(json.loads(preprocessing))
        except ValueError as exc:
            raise ValueError(f"preprocessing is not a valid PreprocessSpec JSON: {exc}") from exc
        labels_path = Path(scratch) / "labels.txt"
        labels_path.write_text(labels)
        model_path = Path(scratch) / "model.onnx"
        with model_path.open("wb") as target:
            shutil.copyfileobj(model.file, target, UPLOAD_CHUNK_BYTES)
        outcome = run_import(plane.engine, _paths(plane), model_path=model_path, labels=read_labels(labels_path),
                             spec=spec, name=name, dataset_id=dataset_id or None)
        payload = _outcome(outcome)
        targets = [p.strip() for p in (profiles or "").split(",") if p.strip()]
        if targets and outcome.status == "validated":
            payload["build"] = _build(build_model(plane.engine, _paths(plane), version=outcome.model_version,
                                                  profiles=targets))
    return payload


@router.get("/{version}")
def get_model(version: VersionParam, session: SessionDep) -> dict[str, Any]:
    """Lineage: dataset, code version, parameters, environment, metrics, gate decision, builds and artifact hashes."""
    # Imported here: it pulls in torch, which the API and CLI keep out of start-up.
    from cloud.pipeline.service import describe_model

    return describe_model(session, version)


@router.post("/{version}/builds", status_code=201)
def build_model(version: VersionParam, body: BuildRequestBody, plane: PlaneDep) -> dict[str, Any]:
    """Build, evaluate and gate every artifact the profiles can use; package the accepted ones."""
    # Imported here: it pulls in torch, which the API and CLI keep out of start-up.
    from cloud.pipeline.service import build_model as run_build

    overrides = {"calibration_method": body.calibration_method, "per_channel": body.per_channel}
    with user_errors():
        result = run_build(plane.engine, _paths(plane), version=version, profiles=body.profiles,
                           quantization_overrides={k: v for k, v in overrides.items() if v is not None},
                           gate=QuantizationGateConfig(max_accuracy_drop_pp=body.max_accuracy_drop_pp),
                           calibration_images=body.calibration_images, allow_unvalidated=body.allow_unvalidated)
    return _build(result)


@router.get("/{version}/builds")
def list_builds(version: VersionParam, session: SessionDep) -> list[dict[str, Any]]:
    # Imported here: it pulls in torch, which the API and CLI keep out of start-up.
    from cloud.pipeline.service import describe_model

    builds: list[dict[str, Any]] = describe_model(session, version)["builds"]
    return builds


@router.post("/{version}/promote")
def promote_model(version: VersionParam, plane: PlaneDep, actor: ActorDep) -> dict[str, Any]:
    """Make a validated model the production model of its name."""
    # Imported here: it pulls in torch, which the API and CLI keep out of start-up.
    from cloud.pipeline.service import promote

    with user_errors():
        model = promote(plane.engine, version, actor=actor)
    return {"model_version": model.version, "status": model.status}
