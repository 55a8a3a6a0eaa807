"""Short paths through the pipeline for the demo and tests.

* :func:`train_and_package`: dataset directory → ingest → train → gate → build → package.
* :func:`detect_train_and_package`: the same for a YOLO-layout detection dataset (the grid detector).
* :func:`register_and_package`: an already exported ONNX file → registered version → FP32 package
  (the thin path the integration tests use to get a package quickly).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine
from sqlmodel import Session

from agent.contract import ModelArtifact, PreprocessSpec, sha256_file
from cloud.fleet import crud
from cloud.fleet.tables import ModelVersion, Package
from cloud.pipeline.detection_service import ingest_detection, train_detection_model
from cloud.pipeline.errors import PipelineInputError
from cloud.pipeline.evaluate.detection_gates import DetectionThresholds
from cloud.pipeline.package.builder import build_package
from cloud.pipeline.presets import QUICKSTART
from cloud.pipeline.service import PipelinePaths, build_model, code_version, ingest, train_model
from cloud.pipeline.train.detector import DetectorConfig
from cloud.pipeline.train.trainer import DEFAULT_SPEC, TrainConfig

# The quick-start settings (cloud/pipeline/presets.py), which the CLI's defaults and the docs use too.
DEMO_TRAIN_CONFIG = TrainConfig(epochs=QUICKSTART.epochs, batch_size=QUICKSTART.batch_size,
                                learning_rate=QUICKSTART.learning_rate)

__all__ = ["DEMO_TRAIN_CONFIG", "PipelineResult", "code_version", "detect_train_and_package", "register_and_package",
           "train_and_package"]


@dataclass(frozen=True)
class PipelineResult:
    model_version: str
    package_id: str
    accuracy: float


def register_and_package(
    engine: Engine,
    *,
    onnx_path: Path,
    labels: list[str],
    model_name: str,
    dataset_id: str,
    packages_dir: Path,
    hardware_profiles: list[str],
    hyperparameters: dict[str, object] | None = None,
    metrics: dict[str, object] | None = None,
    spec: PreprocessSpec = DEFAULT_SPEC,
) -> PipelineResult:
    """Register an exported ONNX model as the next version of ``model_name`` and package it (FP32 only)."""
    with Session(engine) as session:
        version = crud.next_model_version(session, model_name)
        model = crud.add_model_version(session, ModelVersion(
            name=model_name, version=version, dataset_id=dataset_id, code_version=code_version(),
            labels=labels, hyperparameters=hyperparameters or {}, metrics=metrics or {},
            onnx_path=str(onnx_path), onnx_sha256=sha256_file(onnx_path),
        ))
        built = build_package(
            packages_dir=packages_dir, model_name=model_name, model_version=version, labels=labels,
            spec=spec, hardware_profiles=hardware_profiles,
            artifacts=[(onnx_path, ModelArtifact(file="model.onnx", runtime="onnxruntime", precision="fp32"))],
            release=model.id or 0,
        )
        assert model.id is not None
        crud.add_package(session, Package(
            id=built.manifest.package_id, model_version_id=model.id, model_version=version,
            hardware_profiles=hardware_profiles, manifest_sha256=built.manifest_sha256,
            size_bytes=built.size_bytes, path=str(built.directory.resolve()),
        ))
    accuracy = float((metrics or {}).get("accuracy", 0.0))  # type: ignore[arg-type]
    return PipelineResult(model_version=version, package_id=built.manifest.package_id, accuracy=accuracy)


def train_and_package(
    engine: Engine,
    *,
    data_root: Path,
    models_dir: Path,
    packages_dir: Path,
    model_name: str = "shapes",
    hardware_profiles: list[str],
    config: TrainConfig = DEMO_TRAIN_CONFIG,
    show_progress: bool = True,
) -> PipelineResult:
    """Ingest ``data_root``, train, gate, build every profile's artifacts and package them.

    Raises:
        PipelineInputError: the dataset is unusable, or the model or every artifact was rejected.
    """
    data_dir = models_dir.parent
    paths = PipelinePaths(datasets_dir=data_dir / "datasets", models_dir=models_dir, packages_dir=packages_dir,
                          builds_dir=data_dir / "builds")
    ingested = ingest(engine, paths, data_root)
    outcome = train_model(engine, paths, dataset_id=ingested.dataset.dataset_id, name=model_name, config=config,
                          spec=DEFAULT_SPEC, show_progress=show_progress)
    if outcome.status != "validated":
        raise PipelineInputError(f"model {outcome.model_version} was {outcome.status}: {'; '.join(outcome.decision.reasons)}")
    built = build_model(engine, paths, version=outcome.model_version, profiles=hardware_profiles)
    if built.package_id is None:
        raise PipelineInputError(f"no artifact of {outcome.model_version} passed its gates")
    accuracy = outcome.evaluation.accuracy if outcome.evaluation else 0.0
    return PipelineResult(model_version=outcome.model_version, package_id=built.package_id, accuracy=accuracy)


def detect_train_and_package(
    engine: Engine,
    *,
    data_root: Path,
    models_dir: Path,
    packages_dir: Path,
    model_name: str = "scenes",
    hardware_profiles: list[str],
    config: DetectorConfig = DetectorConfig(),
    thresholds: DetectionThresholds = DetectionThresholds(),
) -> PipelineResult:
    """A YOLO-layout detection dataset → ingest → train the grid detector → mAP gate → build → package.

    ``PipelineResult.accuracy`` holds the detector's mAP@0.5 on the test split.

    Raises:
        PipelineInputError: the dataset is unusable, or the model or every artifact was rejected.
    """
    data_dir = models_dir.parent
    paths = PipelinePaths(datasets_dir=data_dir / "datasets", models_dir=models_dir, packages_dir=packages_dir,
                          builds_dir=data_dir / "builds")
    ingested = ingest_detection(engine, paths, data_root)
    outcome = train_detection_model(engine, paths, dataset_id=ingested.record.id, name=model_name, config=config,
                                    thresholds=thresholds, code_version=code_version())
    if outcome.status != "validated":
        raise PipelineInputError(f"model {outcome.model_version} was {outcome.status}: {'; '.join(outcome.decision.reasons)}")
    built = build_model(engine, paths, version=outcome.model_version, profiles=hardware_profiles)
    if built.package_id is None:
        raise PipelineInputError(f"no artifact of {outcome.model_version} passed its gates")
    return PipelineResult(model_version=outcome.model_version, package_id=built.package_id,
                          accuracy=outcome.evaluation.map_50 if outcome.evaluation else 0.0)
