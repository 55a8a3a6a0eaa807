"""The pipeline's use cases, shared by the CLI, the API and the demo.

ingest → validate → train → evaluate → gate → build per profile → quantization gate → package.
Each function takes the database engine and a :class:`PipelinePaths`; the pure parts
(validation, metrics, gates) live in their own modules and never touch disk or DB.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import torch
from sqlalchemy import Engine
from sqlmodel import Session

from agent.contract import PreprocessSpec, sha256_file
from agent.contract.drift import DEFAULT_WINDOW_FRAMES, DRIFT_REFERENCE_FILE
from agent.profiles import FirmwareProfile, load_profiles
from cloud.fleet import crud
from cloud.fleet.tables import ModelVersion, Package
from cloud.governance import audit
from cloud.monitor.reference import build_reference, run_logits
from cloud.pipeline.byo.importer import (
    ImportDeclaration,
    InspectedModel,
    inspect_and_stage,
    model_runtime,
    run_on_images,
    write_golden,
)
from cloud.pipeline.data.dataset import (
    REFERENCE_MIN_IMAGES,
    DatasetVersion,
    decode_image,
    load_stored_dataset,
    load_tensors_with_index,
    reference_images,
    scan_imagefolder,
    store_dataset,
)
from cloud.pipeline.data.detection import (
    DetectionDataset,
    is_detection_dataset,
    load_stored_detection_dataset,
    stored_task,
)
from cloud.pipeline.data.validate import ValidationLimits, ValidationReport, validate_dataset
from cloud.pipeline.errors import BuildToolError, PipelineInputError
from cloud.pipeline.evaluate.detection_gates import DetectionEvaluation, DetectionQuantizationGateConfig
from cloud.pipeline.evaluate.gates import (
    GateDecision,
    QuantizationGateConfig,
    ValidationThresholds,
    validation_gate,
)
from cloud.pipeline.evaluate.metrics import EvaluationReport, evaluate_predictions
from cloud.pipeline.optimize.activation import onnx_output_activation
from cloud.pipeline.optimize.build import BuildOutcome, BuildRequest, EvaluationSet, build_for_profiles
from cloud.pipeline.optimize.quantize import select_calibration
from cloud.pipeline.optimize.runners import device_backend_runner, run_batched, runner_for
from cloud.pipeline.package.builder import BuiltPackage, build_package
from cloud.pipeline.registry import store
from cloud.pipeline.registry.detection_quality import detection_quality
from cloud.pipeline.registry.tables import DatasetRecord, ModelBuild, ModelLineage
from cloud.pipeline.train.model import MobileNetV2
from cloud.pipeline.train.trainer import EpochCallback, TrainConfig, environment, export_onnx, train

if TYPE_CHECKING:  # the detection service imports this module
    from cloud.pipeline.detection_service import DetectionBuildResult

GOLDEN_INPUTS = 8


@dataclass(frozen=True)
class PipelinePaths:
    """Where the pipeline keeps datasets, models, build work directories and packages."""

    datasets_dir: Path
    models_dir: Path
    packages_dir: Path
    builds_dir: Path

    @classmethod
    def under(cls, data_dir: Path) -> PipelinePaths:
        """The control plane's layout (``Settings.models_dir`` and ``packages_dir`` live here too)."""
        return cls(datasets_dir=data_dir / "datasets", models_dir=data_dir / "models",
                   packages_dir=data_dir / "packages", builds_dir=data_dir / "builds")


@dataclass
class IngestResult:
    # A DetectionDataset for a YOLO-layout directory (see cloud.pipeline.data.detection).
    dataset: DatasetVersion | DetectionDataset
    record: DatasetRecord
    report: ValidationReport


@dataclass
class ModelOutcome:
    model_version: str
    status: str
    decision: GateDecision
    evaluation: EvaluationReport | None
    # Detection models: mAP overall, per class and per slice (``evaluation`` is None then).
    detection: DetectionEvaluation | None = None


@dataclass
class BuildResult:
    build_id: str
    model_version: str
    package: BuiltPackage | None
    outcome: BuildOutcome
    notes: list[dict[str, Any]] = field(default_factory=list)

    @property
    def package_id(self) -> str | None:
        return self.package.manifest.package_id if self.package else None


def code_version() -> str | None:
    """The git commit of the code that trained the model, with ``-dirty`` for local changes."""
    cwd = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=cwd)
        # Dirty = uncommitted changes in the pipeline's own code (cwd is cloud/pipeline).
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "."],
                               capture_output=True, text=True, timeout=5, cwd=cwd)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = sha.stdout.strip()
    if not commit:
        return None
    return f"{commit}-dirty" if dirty.stdout.strip() else commit


def resolve_profiles(names: list[str]) -> list[FirmwareProfile]:
    """Raises ``PipelineInputError`` naming the unknown profiles and the known ones."""
    known = load_profiles()
    if not names:
        raise PipelineInputError(f"name at least one hardware profile; known: {', '.join(sorted(known))}")
    unknown = [n for n in names if n not in known]
    if unknown:
        raise PipelineInputError(f"unknown hardware profile(s) {unknown}; known: {', '.join(sorted(known))}")
    return [known[n] for n in dict.fromkeys(names)]


# --- datasets ----------------------------------------------------------------
def validate_directory(root: Path, limits: ValidationLimits = ValidationLimits()) -> ValidationReport:
    """Validate an ImageFolder directory without ingesting it."""
    return validate_dataset(scan_imagefolder(root), limits)[1]


# Directory layouts `ingest` understands; "auto" recognises them in this order: coco, yolo, imagefolder.
INGEST_FORMATS = ("auto", "imagefolder", "yolo", "coco")


def ingest_layout(root: Path, layout: str = "auto") -> str:
    """The layout of ``root`` (``layout`` itself unless it is ``auto``).

    Raises:
        PipelineInputError: an unknown layout name.
    """
    if layout not in INGEST_FORMATS:
        raise PipelineInputError(f"unknown dataset format {layout!r}; known: {', '.join(INGEST_FORMATS)}")
    if layout != "auto":
        return layout
    from cloud.pipeline.data.coco import is_coco_dataset

    if is_detection_dataset(root):
        return "yolo"
    return "coco" if is_coco_dataset(root) else "imagefolder"


def ingest(engine: Engine, paths: PipelinePaths, root: Path,
           limits: ValidationLimits = ValidationLimits(), layout: str = "auto") -> IngestResult:
    """Scan, validate, copy into the content-addressed store and register a dataset version.

    Corrupt images are excluded and reported; the same bytes always give the same id.
    A YOLO-layout directory (``images/``, ``labels/``, ``classes.txt``) is ingested as a
    detection dataset (:func:`cloud.pipeline.detection_service.ingest_detection`), and so is a
    COCO directory (an annotations JSON with its images; ``layout`` forces one of ``INGEST_FORMATS``).
    """
    layout = ingest_layout(root, layout)
    if layout in ("yolo", "coco"):
        from cloud.pipeline.detection_service import ingest_detection

        detection = ingest_detection(engine, paths, root, layout=layout)
        return IngestResult(dataset=detection.dataset, record=detection.record,
                            report=ValidationReport(dataset_id=detection.record.id,
                                                    usable_images=detection.record.image_count))
    scanned = scan_imagefolder(root)
    cleaned, report = validate_dataset(scanned, limits)
    stored = store_dataset(cleaned, paths.datasets_dir)
    record = DatasetRecord(
        id=stored.dataset_id, source_path=str(root.resolve()), store_path=str(paths.datasets_dir.resolve()),
        labels=stored.labels, metadata_fields=stored.metadata_fields, split_counts=stored.split_counts(),
        issues=[issue.as_dict() for issue in report.issues], image_count=len(stored.samples),
        excluded_count=len(report.excluded_files),
    )
    with Session(engine) as session:
        record = store.save_dataset(session, record)
        session.expunge(record)
    return IngestResult(dataset=stored, record=record, report=report)


def load_dataset(paths: PipelinePaths, dataset_id: str) -> DatasetVersion:
    return load_stored_dataset(paths.datasets_dir, dataset_id)


def _blocking_issues(dataset: DatasetVersion) -> list[str]:
    return [f"{i['file']}: {i['reason']}" for i in dataset.issues if i["severity"] == "error" and i["kind"] != "corrupt"]


# --- evaluation helpers --------------------------------------------------------
def evaluation_set(dataset: DatasetVersion, spec: PreprocessSpec, split: str = "test") -> EvaluationSet:
    x, y, samples = load_tensors_with_index(dataset.split(split), dataset.labels, spec)
    return EvaluationSet(x=x, y=y, metadata=[s.meta for s in samples], labels=dataset.labels)


def evaluate_onnx(onnx_path: Path, data: EvaluationSet) -> EvaluationReport:
    scores = run_batched(runner_for("onnxruntime", onnx_path), data.x)
    predictions = scores.argmax(axis=1) if len(scores) else np.zeros(0, dtype=np.int64)
    return evaluate_predictions(predictions, data.y, data.labels, data.metadata)


def _production_evaluation(session: Session, name: str, dataset: DatasetVersion,
                           exclude_version: str) -> tuple[EvaluationReport | None, str | None, list[str]]:
    production = store.production_model(session, name)
    if production is None or production.version == exclude_version:
        return None, None, []
    if list(production.labels) != list(dataset.labels):
        return None, production.version, [f"production {production.version} has labels {production.labels}, "
                                          f"not {dataset.labels}: not compared"]
    lineage = store.get_lineage(session, production.id) if production.id is not None else None
    spec = PreprocessSpec.model_validate(lineage.preprocessing) if lineage and lineage.preprocessing else None
    if spec is None:
        return None, production.version, [f"production {production.version} has no recorded preprocessing"]
    return evaluate_onnx(Path(production.onnx_path), evaluation_set(dataset, spec)), production.version, []


def _gate_and_record(session: Session, model: ModelVersion, *, source: str, spec: PreprocessSpec,
                     evaluation: EvaluationReport | None, dataset: DatasetVersion | None,
                     thresholds: ValidationThresholds, env: dict[str, Any],
                     checkpoint: Path | None) -> ModelOutcome:
    assert model.id is not None
    if evaluation is None or dataset is None:
        decision = GateDecision("registered", notes=["no labelled dataset: not evaluated, not validated"])
        compared = None
    else:
        production_eval, compared, extra_notes = _production_evaluation(session, model.name, dataset, model.version)
        decision = validation_gate(evaluation, thresholds, production_eval, compared)
        decision.notes.extend(extra_notes)
        if production_eval is not None:
            decision.notes.append(f"compared with production {compared}: accuracy {production_eval.accuracy:.3f}")
    store.save_lineage(session, ModelLineage(
        model_version_id=model.id, source=source, preprocessing=spec.model_dump(mode="json"), environment=env,
        evaluation=evaluation.as_dict() if evaluation else {}, gate=decision.as_dict(), compared_with=compared,
        checkpoint_path=str(checkpoint) if checkpoint else None,
    ))
    store.set_status(session, model, decision.status)
    return ModelOutcome(model_version=model.version, status=decision.status, decision=decision, evaluation=evaluation)


# --- training ------------------------------------------------------------------
def train_model(engine: Engine, paths: PipelinePaths, *, dataset_id: str, name: str, config: TrainConfig,
                spec: PreprocessSpec, thresholds: ValidationThresholds = ValidationThresholds(),
                show_progress: bool = True, on_epoch: EpochCallback | None = None) -> ModelOutcome:
    """Train on a stored dataset version, evaluate, gate, and register with full lineage.

    ``on_epoch`` goes to the trainer: progress after every epoch, and an exception it
    raises stops the run before anything is registered.

    Raises:
        PipelineInputError: unknown dataset, or a dataset whose validation found blocking errors.

    A detection dataset trains the grid detector instead (epochs, batch size, seed and
    threads from ``config``; input size from ``spec`` when it is a multiple of 16).
    """
    if stored_task(paths.datasets_dir, dataset_id) == "detection":
        return _train_detection(engine, paths, dataset_id=dataset_id, name=name, config=config, spec=spec,
                                on_epoch=on_epoch)
    dataset = load_dataset(paths, dataset_id)
    blocking = _blocking_issues(dataset)
    if blocking:
        raise PipelineInputError(f"dataset {dataset_id} failed validation; fix: {'; '.join(blocking[:5])}")
    with Session(engine) as session:
        version = crud.next_model_version(session, name)
    model_dir = paths.models_dir / name / version
    result = train(dataset, config, spec, show_progress=show_progress, checkpoint_dir=model_dir / "checkpoints",
                   on_epoch=on_epoch)
    onnx_path = export_onnx(result.model, spec, model_dir / "model.onnx")
    torch.save({"state_dict": result.model.state_dict(), "config": result.hyperparameters,
                "num_classes": len(dataset.labels)}, model_dir / "model.pt")
    evaluation = evaluate_onnx(onnx_path, evaluation_set(dataset, spec))
    hyperparameters = {**result.hyperparameters, "preprocessing": spec.model_dump(mode="json")}
    with Session(engine) as session:
        model = crud.add_model_version(session, ModelVersion(
            name=name, version=version, dataset_id=dataset.dataset_id, code_version=code_version(),
            labels=dataset.labels, hyperparameters=hyperparameters, metrics=evaluation.as_dict(),
            onnx_path=str(onnx_path.resolve()), onnx_sha256=sha256_file(onnx_path),
        ))
        return _gate_and_record(session, model, source="trained", spec=spec, evaluation=evaluation, dataset=dataset,
                                thresholds=thresholds, env=result.environment, checkpoint=result.checkpoint)


def _train_detection(engine: Engine, paths: PipelinePaths, *, dataset_id: str, name: str, config: TrainConfig,
                     spec: PreprocessSpec, on_epoch: EpochCallback | None) -> ModelOutcome:
    from cloud.pipeline.detection_service import train_detection_model
    from cloud.pipeline.train.detector import DETECTION_SPEC, DetectorConfig, detection_spec_for

    detector_spec = detection_spec_for(spec.width) if spec.width == spec.height and spec.width % 16 == 0 else DETECTION_SPEC
    outcome = train_detection_model(
        engine, paths, dataset_id=dataset_id, name=name, spec=detector_spec, on_epoch=on_epoch,
        code_version=code_version(),
        config=DetectorConfig(epochs=config.epochs, batch_size=config.batch_size, seed=config.seed,
                              threads=config.threads))
    return ModelOutcome(model_version=outcome.model_version, status=outcome.status, decision=outcome.decision,
                        evaluation=None, detection=outcome.evaluation)


# --- import --------------------------------------------------------------------
def read_labels(path: Path) -> list[str]:
    """A JSON list or one label per line. Raises ``PipelineInputError`` if unreadable or < 2 labels."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise PipelineInputError(f"cannot read labels file {path}: {exc}") from exc
    labels = json.loads(text) if text.lstrip().startswith("[") else [line.strip() for line in text.splitlines()]
    labels = [str(label) for label in labels if str(label)]
    if len(labels) < 2 or len(set(labels)) != len(labels):
        raise PipelineInputError(f"{path} must list at least two distinct labels, one per line or as a JSON list")
    return labels


def read_spec(path: Path) -> PreprocessSpec:
    try:
        return PreprocessSpec.model_validate_json(path.read_text())
    except (OSError, ValueError) as exc:
        raise PipelineInputError(f"invalid preprocessing spec {path}: {exc}") from exc


def _check_onnx_classifier(onnx_path: Path, labels: list[str], spec: PreprocessSpec) -> None:
    try:
        scores = runner_for("onnxruntime", onnx_path)(np.zeros(spec.input_shape(1), dtype=np.float32))
    except BuildToolError as exc:
        raise PipelineInputError(f"{onnx_path} is not a loadable ONNX model for input {spec.input_shape(1)}: {exc}") from exc
    except Exception as exc:  # ORT's shape errors on run: the spec does not match the model's input
        raise PipelineInputError(f"{onnx_path} does not accept input {spec.input_shape(1)} from the "
                                 f"preprocessing spec: {exc}") from exc
    if scores.ndim != 2 or scores.shape[1] != len(labels):
        raise PipelineInputError(f"{onnx_path.name} outputs shape {list(scores.shape)} but the labels file lists "
                                 f"{len(labels)} classes; they must match")


def import_model(engine: Engine, paths: PipelinePaths, *, model_path: Path, labels: list[str],
                 spec: PreprocessSpec, name: str, dataset_id: str | None = None,
                 thresholds: ValidationThresholds = ValidationThresholds()) -> ModelOutcome:
    """Register an externally trained ONNX classifier; evaluate and gate it when a dataset is given.

    The registry step alone (no package); ``edgefleet model import`` and the API use
    :func:`import_package`, which takes every format and task and packages the file.

    Raises:
        PipelineInputError: not an ONNX file, shapes that do not match labels/spec, unknown dataset,
            or dataset labels that differ from the model's.
    """
    if not model_path.is_file():
        raise PipelineInputError(f"model file {model_path} does not exist")
    if model_path.suffix.lower() != ".onnx":
        raise PipelineInputError(f"{model_path.name}: this registers ONNX classifiers only; LiteRT and OpenVINO "
                                 "files, and detectors, go through import_package (`edgefleet model import`)")
    _check_onnx_classifier(model_path, labels, spec)
    dataset = load_dataset(paths, dataset_id) if dataset_id else None
    if dataset is not None and dataset.labels != labels:
        raise PipelineInputError(f"dataset {dataset_id} has labels {dataset.labels} but the model's labels are "
                                 f"{labels}; use the same class names in the same order")
    with Session(engine) as session:
        version = crud.next_model_version(session, name)
    model_dir = paths.models_dir / name / version
    model_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = model_dir / "model.onnx"
    shutil.copyfile(model_path, onnx_path)
    evaluation = evaluate_onnx(onnx_path, evaluation_set(dataset, spec)) if dataset else None
    with Session(engine) as session:
        model = crud.add_model_version(session, ModelVersion(
            name=name, version=version, dataset_id=dataset.dataset_id if dataset else "", code_version=None,
            labels=labels, hyperparameters={"imported_from": str(model_path), "preprocessing": spec.model_dump(mode="json")},
            metrics=evaluation.as_dict() if evaluation else {}, onnx_path=str(onnx_path.resolve()),
            onnx_sha256=sha256_file(onnx_path),
        ))
        return _gate_and_record(session, model, source="imported", spec=spec, evaluation=evaluation,
                                dataset=dataset, thresholds=thresholds, env=environment(), checkpoint=None)


@dataclass
class ImportResult:
    """An imported model: its registry outcome, the package made from the file as given, and what was checked."""

    outcome: ModelOutcome
    package: BuiltPackage
    inspection: dict[str, Any]
    notes: list[str]
    drift_reference: str

    @property
    def buildable(self) -> bool:
        """A validated ONNX classifier: ``build_model`` can add INT8 and OpenVINO artifacts for it."""
        return (self.outcome.status == "validated" and self.inspection["format"] == "onnxruntime"
                and self.inspection["task"] == "classification")

    def as_dict(self) -> dict[str, Any]:
        return {"model_version": self.outcome.model_version, "status": self.outcome.status,
                "accuracy": self.outcome.evaluation.accuracy if self.outcome.evaluation else None,
                "reasons": self.outcome.decision.reasons, "notes": [*self.outcome.decision.notes, *self.notes],
                "package_id": self.package.manifest.package_id, "manifest_sha256": self.package.manifest_sha256,
                "hardware_profiles": self.package.manifest.hardware_profiles, "drift_reference": self.drift_reference,
                **self.inspection}


def _profiles_running(runtime: str, names: list[str]) -> list[str]:
    if names:
        return [p.name for p in resolve_profiles(names)]
    return sorted(name for name, profile in load_profiles().items()
                  if any(choice.runtime == runtime for choice in profile.runtimes))


def _import_drift_reference(inspected: InspectedModel, dataset: DatasetVersion | DetectionDataset | None,
                            destination: Path) -> tuple[Path | None, str]:
    if inspected.task == "detection":
        if not isinstance(dataset, DetectionDataset):
            return None, ("no drift reference: no detection dataset was given (import with --dataset ds-...); "
                          "devices report no drift windows for this package")
        from cloud.monitor.reference import detections_from_outputs
        from cloud.pipeline.detection_service import build_detection_drift_reference

        block = inspected.detection
        assert block is not None  # a detection model always has its decoder block
        return build_detection_drift_reference(
            dataset, list(inspected.labels), inspected.spec, destination,
            lambda images: detections_from_outputs(run_on_images(inspected, images), images, block,
                                                   list(inspected.labels), inspected.spec))
    if isinstance(dataset, DetectionDataset):
        return None, "no drift reference: a classifier needs a classification dataset"
    if dataset is None:
        # `edgefleet drift reference` computes references with ONNX Runtime: other formats re-import.
        later = (" or run `edgefleet drift reference PACKAGE --data DIR`"
                 if inspected.runtime == "onnxruntime" else "")
        return None, (f"no drift reference: no dataset was given (import with --dataset ds-...{later}); "
                      "devices report no drift windows for this package")
    images, split_names = reference_images(dataset)
    if len(images) < REFERENCE_MIN_IMAGES:
        return None, (f"no drift reference: the dataset's {split_names} split has {len(images)} readable images, "
                      f"a reference needs {REFERENCE_MIN_IMAGES}")
    reference = build_reference(images, run_on_images(inspected, images), list(inspected.labels), inspected.spec,
                                activation=inspected.output_activation, window_frames=DEFAULT_WINDOW_FRAMES,
                                source=f"dataset {dataset.dataset_id} ({split_names})")
    destination.parent.mkdir(parents=True, exist_ok=True)
    destination.write_bytes(reference.to_bytes())
    return destination, (f"drift reference from {len(images)} {split_names} images of dataset {dataset.dataset_id} "
                         f"(k={reference.calibration.k}, h={reference.calibration.h})")


def import_package(engine: Engine, paths: PipelinePaths, *, model_path: Path, name: str,
                   declared: ImportDeclaration = ImportDeclaration(), dataset_id: str | None = None,
                   profiles: list[str] | None = None,
                   thresholds: ValidationThresholds = ValidationThresholds()) -> ImportResult:
    """Import an ONNX, LiteRT or OpenVINO IR classifier or detector and package it as it is.

    Task, decoder, activation, labels and input size come from ``declared``, else the
    exporter's metadata, else the model's output shape and its outputs on reference
    images run through the device runtime (see :mod:`cloud.pipeline.byo`). A classifier
    with a dataset is evaluated and gated on its test split; a dataset also gives the
    reference images and the package's drift reference. ``profiles`` default to every
    hardware profile that lists the model's runtime.

    Raises:
        AmbiguousModel: only a flag can settle what the model is (the message names it).
        PipelineInputError: unreadable model, contradicting declarations, unknown dataset or profiles.
    """
    dataset: DatasetVersion | DetectionDataset | None = None
    if dataset_id:
        # A detection set gives a detector its drift reference (the detector's own boxes on held-out images).
        dataset = (load_stored_detection_dataset(paths.datasets_dir, dataset_id)
                   if stored_task(paths.datasets_dir, dataset_id) == "detection" else load_dataset(paths, dataset_id))
    images = None
    if dataset is not None:
        held_out = [*dataset.split("val"), *dataset.split("test")][:GOLDEN_INPUTS]
        images = [image for image in (decode_image(s.path) for s in held_out) if image is not None] or None
    runtime = model_runtime(model_path) if model_path.is_file() else None
    hardware = _profiles_running(runtime, profiles or []) if runtime else []
    if runtime and not hardware:
        raise PipelineInputError(f"no hardware profile lists runtime {runtime}; pass --profile NAME")
    with Session(engine) as session:
        version = crud.next_model_version(session, name)
    model_dir = paths.models_dir / name / version
    try:
        inspected = inspect_and_stage(model_path, declared, model_dir, images)
    except Exception:
        shutil.rmtree(model_dir, ignore_errors=True)
        raise
    if isinstance(dataset, DetectionDataset) and inspected.task == "classification":
        shutil.rmtree(model_dir, ignore_errors=True)
        raise PipelineInputError(f"dataset {dataset_id} is a detection set and the model is a classifier; "
                                 "give a classification dataset")
    if dataset is not None and inspected.task == "classification" and dataset.labels != inspected.labels:
        shutil.rmtree(model_dir, ignore_errors=True)
        raise PipelineInputError(f"dataset {dataset_id} has labels {dataset.labels} but the model's labels are "
                                 f"{inspected.labels}; use the same class names in the same order")
    evaluation = None
    notes = list(inspected.notes)
    if isinstance(dataset, DatasetVersion) and inspected.task == "classification":
        data = evaluation_set(dataset, inspected.spec)
        # One image at a time through the device backend: imported files often fix the batch at 1.
        scores = run_batched(device_backend_runner(inspected.runtime, inspected.model_file), data.x)
        predictions = scores.argmax(axis=1) if len(scores) else np.zeros(0, dtype=np.int64)
        evaluation = evaluate_predictions(predictions, data.y, data.labels, data.metadata)
    elif isinstance(dataset, DetectionDataset):
        notes.append(f"the detector was not evaluated on dataset {dataset_id}; its images were used for the "
                     "reference check and the drift reference")
    elif dataset is not None:
        notes.append(f"dataset {dataset_id} is an image-classification set: the detector was not evaluated on it, "
                     "only its images were used for the reference check")
    golden, tolerance = write_golden(inspected, model_dir / f"golden-{inspected.model_file.stem}.npz")
    artifact = inspected.artifact().model_copy(update={"golden_file": golden.name, "golden_tolerance": tolerance})
    reference, drift_note = _import_drift_reference(inspected, dataset, model_dir / DRIFT_REFERENCE_FILE)
    summary = inspected.summary()
    with Session(engine) as session:
        model = crud.add_model_version(session, ModelVersion(
            name=name, version=version,
            dataset_id=dataset.dataset_id if dataset is not None and inspected.task == "classification" else "",
            code_version=None, labels=inspected.labels,
            hyperparameters={"imported_from": str(model_path), "preprocessing": inspected.spec.model_dump(mode="json"),
                             **{k: summary[k] for k in ("format", "precision", "task", "decoder", "activation")}},
            metrics=evaluation.as_dict() if evaluation else {}, onnx_path=str(inspected.model_file.resolve()),
            onnx_sha256=sha256_file(inspected.model_file)))
        outcome = _gate_and_record(session, model, source="imported", spec=inspected.spec, evaluation=evaluation,
                                   dataset=dataset if evaluation is not None and isinstance(dataset, DatasetVersion) else None, thresholds=thresholds,
                                   env=environment(), checkpoint=None)
        release = model.id or 0
    package = build_package(packages_dir=paths.packages_dir, model_name=name, model_version=version,
                            labels=inspected.labels, spec=inspected.spec, hardware_profiles=hardware,
                            artifacts=[(inspected.model_file, artifact)],
                            extra_files=[*inspected.extra_files, golden], drift_reference=reference,
                            detection=inspected.detection, release=release)
    with Session(engine) as session:
        model = crud.get_model_version(session, version)
        assert model.id is not None
        if session.get(Package, package.manifest.package_id) is None:
            crud.add_package(session, Package(
                id=package.manifest.package_id, model_version_id=model.id, model_version=version,
                hardware_profiles=hardware, manifest_sha256=package.manifest_sha256, size_bytes=package.size_bytes,
                path=str(package.directory.resolve())))
    return ImportResult(outcome=outcome, package=package, inspection=summary, notes=notes,
                        drift_reference=drift_note)


# --- builds --------------------------------------------------------------------
def build_drift_reference(onnx_path: Path, dataset: DatasetVersion, labels: list[str], spec: PreprocessSpec,
                          destination: Path, *, window_frames: int = DEFAULT_WINDOW_FRAMES) -> tuple[Path | None, str]:
    """Write the package's drift reference to ``destination`` from the dataset's held-out images.

    Images the model should see in service but was not trained on: the validation split,
    topped up with the test split when it is short. Returns the file (``None`` when there
    are too few images) and a note saying what was done, for the build's notes.
    """
    images, split_names = reference_images(dataset)
    if len(images) < REFERENCE_MIN_IMAGES:
        return None, (f"no drift reference: the dataset's {split_names} split has {len(images)} readable images, "
                      f"a reference needs {REFERENCE_MIN_IMAGES}; devices report no drift windows for this package "
                      "(add images, or run `edgefleet drift reference PACKAGE --data DIR`)")
    reference = build_reference(images, run_logits(onnx_path, images, spec), list(labels), spec,
                                activation=onnx_output_activation(onnx_path), window_frames=window_frames, source=f"dataset {dataset.dataset_id} ({split_names})")
    destination.parent.mkdir(parents=True, exist_ok=True)
    destination.write_bytes(reference.to_bytes())
    return destination, (f"drift reference from {len(images)} {split_names} images of dataset {dataset.dataset_id}, "
                         f"calibrated on windows of {window_frames} frames (k={reference.calibration.k}, "
                         f"h={reference.calibration.h})")


def _load_torch_model(model_dir: Path, labels: list[str]) -> torch.nn.Module | None:
    path = model_dir / "model.pt"
    if not path.exists():
        return None
    saved = torch.load(path, weights_only=True)
    config = saved["config"]
    module = MobileNetV2(saved["num_classes"], config["width_multiplier"], config["architecture"])
    module.load_state_dict(saved["state_dict"])
    return module.eval()


def build_model(engine: Engine, paths: PipelinePaths, *, version: str, profiles: list[str],
                quantization_overrides: dict[str, Any] | None = None,
                gate: QuantizationGateConfig = QuantizationGateConfig(),
                calibration_images: int = 128, calibration: npt.NDArray[np.float32] | None = None,
                allow_unvalidated: bool = False, use_nncf: bool = True,
                log: Callable[[str], None] = lambda _: None) -> BuildResult | DetectionBuildResult:
    """Build every artifact ``profiles`` can use, gate the INT8 ones, and package the accepted ones.

    A detection model goes to :func:`cloud.pipeline.detection_service.build_detection_model`
    (INT8 gated on mAP@0.5, with ``gate.max_accuracy_drop_pp`` as the mAP drop limit).

    ``calibration`` replaces the calibration set drawn from the training split (tests
    use it to force a bad INT8 build).

    Raises:
        NotFound: unknown model version.
        PipelineInputError: unknown profiles, or a model that is not validated (unless ``allow_unvalidated``).
    """
    targets = resolve_profiles(profiles)
    with Session(engine) as session:
        model = crud.get_model_version(session, version)
        lineage = store.get_lineage(session, model.id) if model.id is not None else None
        session.expunge(model)
    # Only import_package records "format": trained models (of any task) are not concerned here.
    imported = (model.hyperparameters or {}).get("format"), (model.hyperparameters or {}).get("task")
    if imported[0] is not None and imported != ("onnxruntime", "classification"):
        # Builds convert and quantize ONNX classifiers; any other import was packaged as it is when imported.
        raise PipelineInputError(f"model {version} was imported as a {imported[0]} {imported[1]} model: its package "
                                 "was made at import (`edgefleet package list`); builds convert ONNX classifiers only")
    if (model.hyperparameters or {}).get("task") == "detection":
        from cloud.pipeline.detection_service import build_detection_model

        return build_detection_model(
            engine, paths, version=version, profiles=targets, quantization_overrides=quantization_overrides,
            gate=DetectionQuantizationGateConfig(max_map50_drop_pp=gate.max_accuracy_drop_pp),
            calibration_images=calibration_images, calibration=calibration, allow_unvalidated=allow_unvalidated,
            use_nncf=use_nncf, log=log)
    if model.status not in ("validated", "production") and not allow_unvalidated:
        reasons = "; ".join((lineage.gate.get("reasons") if lineage else None) or []) or "not validated"
        raise PipelineInputError(f"model {version} is {model.status} ({reasons}); only validated models are built "
                                 "(use --allow-unvalidated to build anyway)")
    spec = PreprocessSpec.model_validate(lineage.preprocessing) if lineage and lineage.preprocessing else None
    if spec is None:
        raise PipelineInputError(f"model {version} has no recorded preprocessing spec")
    dataset = load_dataset(paths, model.dataset_id) if model.dataset_id else None
    evaluation = evaluation_set(dataset, spec) if dataset else None
    if calibration is None and dataset is not None:
        train_x = load_tensors_with_index(dataset.split("train"), dataset.labels, spec)[0]
        calibration = select_calibration(train_x, calibration_images) if len(train_x) else None
    if dataset is not None:
        golden_source = evaluation_set(dataset, spec, "val").x
        golden_inputs = golden_source[:GOLDEN_INPUTS] if len(golden_source) else evaluation.x[:GOLDEN_INPUTS]  # type: ignore[union-attr]
    else:
        # No data: deterministic pseudo-images in the model's input range still pin the numerics.
        golden_inputs = np.random.default_rng(0).normal(0, 1, (GOLDEN_INPUTS, *spec.input_shape(1)[1:])).astype(np.float32)
    model_dir = Path(model.onnx_path).parent
    build_id = crud.short_id("build")
    outcome = build_for_profiles(BuildRequest(
        fp32_onnx=Path(model.onnx_path), spec=spec, labels=list(model.labels), profiles=targets,
        work_dir=paths.builds_dir / build_id, calibration=calibration, evaluation=evaluation,
        golden_inputs=golden_inputs, torch_model=_load_torch_model(model_dir, list(model.labels)),
        quantization_overrides=quantization_overrides or {}, gate=gate, use_nncf=use_nncf,
    ), log=log)
    accepted = outcome.accepted
    package: BuiltPackage | None = None
    reference_path: Path | None = None
    if accepted:
        # Every package built with its data carries a drift reference, so a device running
        # it reports drift windows without another step.
        if dataset is not None:
            reference_path, message = build_drift_reference(
                Path(model.onnx_path), dataset, list(model.labels), spec,
                paths.builds_dir / build_id / DRIFT_REFERENCE_FILE)
        else:
            message = ("no drift reference: the model has no dataset; build one with "
                       "`edgefleet drift reference PACKAGE --data DIR`")
        outcome.notes.append({"profile": "all", "target": "drift-reference",
                              "status": "built" if reference_path is not None else "not_built", "message": message})
        package = build_package(
            packages_dir=paths.packages_dir, model_name=model.name, model_version=model.version,
            labels=list(model.labels), spec=spec, hardware_profiles=[p.name for p in targets],
            # FP32 ONNX first: an agent that loads "the first artifact it can run" gets the safe one.
            artifacts=[(a.path, a.artifact) for a in accepted],
            extra_files=[extra for a in accepted for extra in a.extra_files],
            drift_reference=reference_path,
            release=model.id or 0,
        )
    with Session(engine) as session:
        if package is not None:
            assert model.id is not None
            if session.get(Package, package.manifest.package_id) is None:
                crud.add_package(session, Package(
                    id=package.manifest.package_id, model_version_id=model.id, model_version=model.version,
                    hardware_profiles=[p.name for p in targets], manifest_sha256=package.manifest_sha256,
                    size_bytes=package.size_bytes, path=str(package.directory.resolve()),
                ))
        assert model.id is not None
        store.add_build(session, ModelBuild(
            id=build_id, model_version_id=model.id, profiles=[p.name for p in targets],
            artifacts=[a.summary() for a in outcome.artifacts], notes=outcome.notes,
            package_id=package.manifest.package_id if package else None,
        ))
    return BuildResult(build_id=build_id, model_version=model.version, package=package, outcome=outcome,
                       notes=outcome.notes)


def promote(engine: Engine, version: str, *, actor: str = "operator") -> ModelVersion:
    """Make a validated model the production model of its name (the previous one is retired).

    Raises:
        NotFound: unknown version. PipelineInputError: the model is not validated.
    """
    with Session(engine) as session:
        model = crud.get_model_version(session, version)
        if model.status not in ("validated", "production"):
            raise PipelineInputError(f"model {version} is {model.status}; only a validated model can go to production")
        current = store.production_model(session, model.name)
        retired = current.version if current is not None and current.version != version else None
        if current is not None and retired is not None:
            store.set_status(session, current, "retired")
        model = store.set_status(session, model, "production")
        audit.record(session, actor=actor, action="model.promoted", subject_type="model", subject_id=version,
                     details={"name": model.name, "retired": retired})
        session.commit()
        session.refresh(model)
        session.expunge(model)
        return model


def describe_model(session: Session, version: str) -> dict[str, Any]:
    """Everything the registry knows about one model version: lineage, metrics, builds, artifacts."""
    model = crud.get_model_version(session, version)
    assert model.id is not None
    lineage = store.get_lineage(session, model.id)
    builds = store.list_builds(session, model.id)
    build_rows = [{"id": b.id, "profiles": b.profiles, "package_id": b.package_id, "artifacts": b.artifacts,
                   "notes": b.notes, "created_at": b.created_at.isoformat()} for b in builds]
    evaluation = lineage.evaluation if lineage else model.metrics
    gate = lineage.gate if lineage else {}
    return {
        "id": model.id, "metrics": model.metrics, "version": model.version, "name": model.name, "status": model.status, "dataset_id": model.dataset_id,
        "code_version": model.code_version, "labels": model.labels, "hyperparameters": model.hyperparameters,
        "onnx_sha256": model.onnx_sha256, "created_at": model.created_at.isoformat(),
        "source": lineage.source if lineage else None,
        "environment": lineage.environment if lineage else {},
        "evaluation": evaluation,
        "gate": gate,
        "compared_with": lineage.compared_with if lineage else None,
        "builds": build_rows,
        # None for a classifier: its figures stay where they were (metrics, evaluation, builds).
        "detection_quality": detection_quality(hyperparameters=model.hyperparameters, evaluation=evaluation,
                                               gate=gate, builds=build_rows),
    }
