"""The thin model path end to end: dataset → train → evaluate → ONNX → register → package."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine
from sqlmodel import Session

from agent.contract import ModelArtifact, PreprocessSpec, sha256_file
from cloud import crud
from cloud.models import ModelVersion, Package
from cloud.pipeline.data.dataset import scan_imagefolder
from cloud.pipeline.package.builder import build_package
from cloud.pipeline.train.trainer import DEFAULT_SPEC, TrainConfig, export_onnx, train


@dataclass(frozen=True)
class PipelineResult:
    model_version: str
    package_id: str
    accuracy: float


def code_version() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


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
    """Register an exported ONNX model as the next version of ``model_name`` and package it."""
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
    config: TrainConfig = TrainConfig(),
    show_progress: bool = True,
) -> PipelineResult:
    """Train on ``data_root``, export ONNX, register the version and build its package."""
    dataset = scan_imagefolder(data_root)
    result = train(dataset, config, DEFAULT_SPEC, show_progress=show_progress)
    onnx_path = export_onnx(result.model, DEFAULT_SPEC, models_dir / model_name / f"{dataset.dataset_id}-seed{config.seed}" / "model.onnx")
    return register_and_package(
        engine, onnx_path=onnx_path, labels=dataset.labels, model_name=model_name, dataset_id=dataset.dataset_id,
        packages_dir=packages_dir, hardware_profiles=hardware_profiles,
        hyperparameters=result.hyperparameters, metrics=result.metrics,
    )
