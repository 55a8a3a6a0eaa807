"""Model registry routes: list, lineage, train, import, build, promote.

Training and builds run as jobs (cloud/jobs/): the request is checked, queued and
answered 202 with the job id at once; the job's result carries the gate decision and
the artifacts with their hashes (``GET /api/v1/jobs/{id}``).
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
from sqlmodel import Session

from agent.contract import PreprocessSpec
from agent.profiles import load_profiles
from cloud.api.deps import ActorDep, PlaneDep, SessionDep
from cloud.api.routes.jobs import submit
from cloud.core.ids import DATASET_ID, SAFE_ID
from cloud.fleet import crud
from cloud.fleet.tables import ModelVersionPublic

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


@router.post("/train", status_code=202)
def train_model(body: TrainRequest, plane: PlaneDep, actor: ActorDep) -> dict[str, Any]:
    """Queue training on an ingested dataset (evaluate, gate, register with lineage); 202 with the job id."""
    # Imported here: it pulls in the pipeline, which the API keeps out of start-up.
    from cloud.jobs.handlers import train_setup
    from cloud.pipeline.data.dataset import load_stored_dataset

    params = body.model_dump()
    with user_errors():
        train_setup(params)  # a bad profile or value is refused now, not minutes later in the job
        load_stored_dataset(_paths(plane).datasets_dir, body.dataset_id)
    return submit(plane, "train", params, created_by=actor)


@router.post("/import", status_code=201)
def import_model(
    plane: PlaneDep,
    model: Annotated[UploadFile, File(description="ONNX (.onnx), LiteRT (.tflite) or OpenVINO IR (.xml) file; "
                                                  "its file name's suffix says which")],
    name: Annotated[str, Form(min_length=1, max_length=100, pattern=SAFE_ID)],
    weights: Annotated[UploadFile | None, File(description="the OpenVINO IR's .bin (with an .xml model)")] = None,
    labels: Annotated[str | None, Form(description="labels: a JSON list or one per line "
                                                   "(default: the model's metadata)")] = None,
    preprocessing: Annotated[str | None, Form(description="PreprocessSpec as JSON (default: RGB, pixels / 255, "
                                                          "letterbox 114 for detectors)")] = None,
    task: Annotated[str | None, Form(description="classification | detection")] = None,
    decoder: Annotated[str | None, Form(description="yolo_raw | nms_in_graph | yolov5")] = None,
    activation: Annotated[str | None, Form(description="logits | probabilities")] = None,
    input_size: Annotated[str | None, Form(description="WIDTHxHEIGHT or one number")] = None,
    score_threshold: Annotated[float | None, Form(ge=0, le=1)] = None,
    iou_threshold: Annotated[float | None, Form(gt=0, le=1)] = None,
    max_detections: Annotated[int | None, Form(ge=1, le=1000)] = None,
    dataset_id: Annotated[str | None, Form(pattern=f"{DATASET_ID}|^$")] = None,
    profiles: Annotated[str | None, Form(description="comma-separated profiles (default: every profile that runs "
                                                     "the model's format); a validated ONNX classifier is also "
                                                     "built for them (INT8, OpenVINO)")] = None,
) -> dict[str, Any]:
    """Import an external classifier or detector and package it as it is (see docs/byo-models.md).

    400 with the flag to pass when the model is ambiguous or contradicts what was declared.
    """
    # Imported here: it pulls in torch, which the API and CLI keep out of start-up.
    from cloud.pipeline.byo.importer import FORMATS, ImportDeclaration, parse_input_size
    from cloud.pipeline.service import build_model, import_package, read_labels

    plane.settings.uploads_dir.mkdir(parents=True, exist_ok=True)
    # Scratch space in the data directory, not /tmp: the upload may be large, and it is
    # copied in chunks, never held whole in memory.
    with user_errors(), tempfile.TemporaryDirectory(dir=plane.settings.uploads_dir) as scratch:
        suffix = Path(model.filename or "").suffix.lower()
        if suffix not in FORMATS:
            raise ValueError(f"the uploaded model's file name {model.filename!r} must end in .onnx, .tflite or .xml")
        if (suffix == ".xml") != (weights is not None):
            raise ValueError("OpenVINO IR needs both files: the .xml as 'model' and its .bin as 'weights'"
                             if suffix == ".xml" else "'weights' is only for an OpenVINO IR .xml model")
        spec = None
        if preprocessing:
            try:
                spec = PreprocessSpec.model_validate(json.loads(preprocessing))
            except ValueError as exc:
                raise ValueError(f"preprocessing is not a valid PreprocessSpec JSON: {exc}") from exc
        label_list = None
        if labels:
            labels_path = Path(scratch) / "labels.txt"
            labels_path.write_text(labels)
            label_list = read_labels(labels_path)
        model_path = Path(scratch) / f"model{suffix}"
        uploads = [(model, model_path)] + ([(weights, model_path.with_suffix(".bin"))] if weights else [])
        for upload, path in uploads:
            with path.open("wb") as target:
                shutil.copyfileobj(upload.file, target, UPLOAD_CHUNK_BYTES)
        declared = ImportDeclaration.checked(
            labels=label_list, spec=spec, task=task or None, decoder=decoder or None, activation=activation or None,
            input_size=parse_input_size(input_size) if input_size else None, score_threshold=score_threshold,
            iou_threshold=iou_threshold, max_detections=max_detections)
        targets = [p.strip() for p in (profiles or "").split(",") if p.strip()]
        result = import_package(plane.engine, _paths(plane), model_path=model_path, name=name, declared=declared,
                                dataset_id=dataset_id or None, profiles=targets)
        payload = result.as_dict()
        if targets and result.buildable:
            payload["build"] = _build(build_model(plane.engine, _paths(plane), version=result.outcome.model_version,
                                                  profiles=targets))
    return payload


@router.get("/{version}")
def get_model(version: VersionParam, session: SessionDep) -> dict[str, Any]:
    """Lineage: dataset, code version, parameters, environment, metrics, gate decision, builds and artifact hashes."""
    # Imported here: it pulls in torch, which the API and CLI keep out of start-up.
    from cloud.pipeline.service import describe_model

    return describe_model(session, version)


@router.post("/{version}/builds", status_code=202)
def build_model(version: VersionParam, body: BuildRequestBody, plane: PlaneDep, actor: ActorDep) -> dict[str, Any]:
    """Queue a build (evaluate and gate every artifact the profiles can use, package the accepted ones); 202."""
    with Session(plane.engine) as session:
        crud.get_model_version(session, version)  # 404 now for an unknown version
    known = load_profiles()
    unknown = [name for name in body.profiles if name not in known]
    if unknown:
        raise HTTPException(status_code=400,
                            detail=f"unknown hardware profile(s) {unknown}; known: {', '.join(sorted(known))}")
    return submit(plane, "build", {"version": version, **body.model_dump()}, created_by=actor)


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
