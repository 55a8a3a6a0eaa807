"""The pipeline's detection use cases: ingest → train → gate → build per profile → gate → package.

The same registry, lineage, build records and packages as classification
(:mod:`cloud.pipeline.service`, which dispatches here for detection datasets and
models); what differs is the data (YOLO layout), the model (the grid detector), the
metric (mAP through the agent's decoder) and the package's ``detection`` block.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from sqlalchemy import Engine
from sqlmodel import Session

from agent.contract import DetectionSpec, PreprocessSpec, sha256_file
from agent.contract.drift import DEFAULT_WINDOW_FRAMES, DRIFT_REFERENCE_FILE
from agent.infer.detect import Detection
from agent.profiles import FirmwareProfile
from cloud.fleet import crud
from cloud.fleet.tables import ModelVersion, Package
from cloud.monitor.reference import build_detection_reference, run_detections
from cloud.pipeline.data.dataset import REFERENCE_MIN_IMAGES, reference_images
from cloud.pipeline.data.detection import (
    DetectionDataset,
    load_detection_tensors,
    load_stored_detection_dataset,
    scan_detection_dataset,
    store_detection_dataset,
)
from cloud.pipeline.data.detection_validate import (
    DetectionLimits,
    DetectionValidationReport,
    validate_detection_dataset,
)
from cloud.pipeline.errors import PipelineInputError
from cloud.pipeline.evaluate.detection_gates import (
    DetectionEvaluation,
    DetectionQuantizationGateConfig,
    DetectionThresholds,
    detection_validation_gate,
)
from cloud.pipeline.evaluate.gates import GateDecision
from cloud.pipeline.optimize.detection_build import (
    DetectionBuildOutcome,
    DetectionBuildRequest,
    build_detection_for_profiles,
    evaluate_artifact,
)
from cloud.pipeline.optimize.quantize import select_calibration
from cloud.pipeline.package.builder import BuiltPackage, build_package
from cloud.pipeline.registry import store
from cloud.pipeline.registry.tables import DatasetRecord, ModelBuild, ModelLineage
from cloud.pipeline.train.detector import (
    DETECTION_SPEC,
    DetectorConfig,
    detection_block,
    export_detector_onnx,
    load_detector,
    save_detector,
    train_detector,
)

GOLDEN_INPUTS = 8
TASK = "detection"


class PipelineDirs(Protocol):
    """Where datasets, models, builds and packages live (``cloud.pipeline.service.PipelinePaths``)."""

    @property
    def datasets_dir(self) -> Path: ...
    @property
    def models_dir(self) -> Path: ...
    @property
    def packages_dir(self) -> Path: ...
    @property
    def builds_dir(self) -> Path: ...


@dataclass
class DetectionIngestResult:
    dataset: DetectionDataset
    record: DatasetRecord
    report: DetectionValidationReport | None = None


@dataclass
class DetectionModelOutcome:
    model_version: str
    status: str
    decision: GateDecision
    evaluation: DetectionEvaluation | None


@dataclass
class DetectionBuildResult:
    build_id: str
    model_version: str
    package: BuiltPackage | None
    outcome: DetectionBuildOutcome
    notes: list[dict[str, Any]] = field(default_factory=list)

    @property
    def package_id(self) -> str | None:
        return self.package.manifest.package_id if self.package else None


def scan_detection_layout(root: Path, layout: str) -> DetectionDataset:
    """Scan a ``yolo`` or ``coco`` directory (not yet validated)."""
    if layout == "coco":
        from cloud.pipeline.data.coco import scan_coco_dataset

        return scan_coco_dataset(root)
    return scan_detection_dataset(root)


def validate_detection_directory(root: Path, layout: str = "yolo",
                                 limits: DetectionLimits = DetectionLimits()) -> DetectionValidationReport:
    """Validate a YOLO or COCO directory without ingesting it."""
    return validate_detection_dataset(scan_detection_layout(root, layout), limits)


def ingest_detection(engine: Engine, paths: PipelineDirs, root: Path, layout: str = "yolo",
                     limits: DetectionLimits = DetectionLimits()) -> DetectionIngestResult:
    """Scan a YOLO-layout or COCO directory, validate it, store it content-addressed and register the version.

    Warnings (duplicates, leakage) and the count of unlabelled images go into the record's issues.

    Raises:
        PipelineInputError: not a detection dataset, a malformed label file (named with its line), or
            validation errors (every one named with its file, up to ten in the message).
    """
    scanned = scan_detection_layout(root, layout)
    report = validate_detection_dataset(scanned, limits)
    errors = report.errors()
    if errors:
        shown = "; ".join(f"{e.file}: {e.reason}" for e in errors[:10])
        more = f" (and {len(errors) - 10} more)" if len(errors) > 10 else ""
        raise PipelineInputError(f"{root} failed detection validation with {len(errors)} error(s): {shown}{more}")
    stored = store_detection_dataset(scanned, paths.datasets_dir)
    issues = [issue.as_dict() for issue in report.issues]
    if report.unlabelled_images:
        issues.append({"kind": "unlabelled", "severity": "info", "file": "images/",
                       "reason": f"{report.unlabelled_images} of {report.images} images have no boxes "
                                 "(kept as negative frames)"})
    record = DatasetRecord(
        id=stored.dataset_id, source_path=str(root.resolve()), store_path=str(paths.datasets_dir.resolve()),
        labels=stored.labels, metadata_fields=stored.metadata_fields, split_counts=stored.split_counts(),
        issues=issues, image_count=len(stored.samples), excluded_count=0,
    )
    with Session(engine) as session:
        record = store.save_dataset(session, record)
        session.expunge(record)
    return DetectionIngestResult(dataset=stored, record=record, report=report)


def train_detection_model(engine: Engine, paths: PipelineDirs, *, dataset_id: str, name: str, config: DetectorConfig,
                          spec: PreprocessSpec = DETECTION_SPEC,
                          thresholds: DetectionThresholds = DetectionThresholds(),
                          block: DetectionSpec | None = None,
                          on_epoch: Callable[[int, int, float], None] | None = None,
                          code_version: str | None = None) -> DetectionModelOutcome:
    """Train the grid detector on a stored detection dataset, evaluate it through the agent's
    decoder on the test split, gate it, and register it with lineage.

    Raises:
        PipelineInputError: unknown or non-detection dataset, or no readable training image.
    """
    dataset = load_stored_detection_dataset(paths.datasets_dir, dataset_id)
    block = block or detection_block(spec)
    with Session(engine) as session:
        version = crud.next_model_version(session, name)
    model_dir = paths.models_dir / name / version
    result = train_detector(dataset, config, spec, on_epoch=on_epoch)
    onnx_path = export_detector_onnx(result.model, spec, model_dir / "model.onnx")
    save_detector(result.model, result.hyperparameters, len(dataset.labels), model_dir / "model.pt")
    test = load_detection_tensors(dataset.split("test"), spec)
    evaluation = (evaluate_artifact("onnxruntime", onnx_path, test, block=block, labels=dataset.labels, spec=spec)
                  if len(test) else None)
    decision = (detection_validation_gate(evaluation, thresholds) if evaluation is not None
                else GateDecision("rejected", ["the test split is empty: nothing to evaluate on"]))
    hyperparameters = {**result.hyperparameters, "preprocessing": spec.model_dump(mode="json"),
                       "detection": block.model_dump(mode="json")}
    metrics = evaluation.as_dict() if evaluation is not None else {}
    with Session(engine) as session:
        model = crud.add_model_version(session, ModelVersion(
            name=name, version=version, dataset_id=dataset.dataset_id, code_version=code_version,
            labels=dataset.labels, hyperparameters=hyperparameters, metrics=metrics,
            onnx_path=str(onnx_path.resolve()), onnx_sha256=sha256_file(onnx_path),
        ))
        assert model.id is not None
        store.save_lineage(session, ModelLineage(
            model_version_id=model.id, source="trained", preprocessing=spec.model_dump(mode="json"),
            environment=result.environment, evaluation=metrics,
            # The thresholds too, so the model page can say which slice passed against what.
            gate={**decision.as_dict(), "thresholds": asdict(thresholds)},
        ))
        store.set_status(session, model, decision.status)
    return DetectionModelOutcome(model_version=version, status=decision.status, decision=decision,
                                 evaluation=evaluation)


def is_detection_model(model: ModelVersion) -> bool:
    return (model.hyperparameters or {}).get("task") == TASK


def build_detection_model(engine: Engine, paths: PipelineDirs, *, version: str, profiles: list[FirmwareProfile],
                          quantization_overrides: dict[str, Any] | None = None,
                          gate: DetectionQuantizationGateConfig = DetectionQuantizationGateConfig(),
                          calibration_images: int = 128, calibration: npt.NDArray[np.float32] | None = None,
                          allow_unvalidated: bool = False, use_nncf: bool = True,
                          log: Callable[[str], None] = lambda _: None) -> DetectionBuildResult:
    """Build every artifact ``profiles`` can use for a trained detector, gate the INT8 ones on
    mAP@0.5, and package the accepted ones with the manifest's detection block.

    ``calibration`` replaces the calibration set drawn from the training split.

    Raises:
        NotFound: unknown model version.
        PipelineInputError: not a detection model, no profiles, or a model that is not validated.
    """
    targets = profiles
    if not targets:
        raise PipelineInputError("name at least one hardware profile")
    with Session(engine) as session:
        model = crud.get_model_version(session, version)
        session.expunge(model)
    if not is_detection_model(model):
        raise PipelineInputError(f"model {version} is not a detection model")
    if model.status not in ("validated", "production") and not allow_unvalidated:
        raise PipelineInputError(f"model {version} is {model.status}; only validated models are built "
                                 "(use --allow-unvalidated to build anyway)")
    spec = PreprocessSpec.model_validate(model.hyperparameters["preprocessing"])
    block = DetectionSpec.model_validate(model.hyperparameters["detection"])
    dataset = load_stored_detection_dataset(paths.datasets_dir, model.dataset_id) if model.dataset_id else None
    test = load_detection_tensors(dataset.split("test"), spec) if dataset else None
    if calibration is None and dataset is not None:
        train_x = load_detection_tensors(dataset.split("train"), spec).x
        calibration = select_calibration(train_x, calibration_images) if len(train_x) else None
    golden_inputs = (load_detection_tensors(dataset.split("val"), spec).x[:GOLDEN_INPUTS] if dataset is not None
                     else np.zeros((0, *spec.input_shape(1)[1:]), dtype=np.float32))
    if not len(golden_inputs) and test is not None:
        golden_inputs = test.x[:GOLDEN_INPUTS]
    model_dir = Path(model.onnx_path).parent
    torch_model = load_detector(model_dir / "model.pt") if (model_dir / "model.pt").exists() else None
    build_id = crud.short_id("build")
    outcome = build_detection_for_profiles(DetectionBuildRequest(
        fp32_onnx=Path(model.onnx_path), spec=spec, labels=list(model.labels), block=block, profiles=targets,
        work_dir=paths.builds_dir / build_id, calibration=calibration, evaluation=test, golden_inputs=golden_inputs,
        torch_model=torch_model, quantization_overrides=quantization_overrides or {}, gate=gate, use_nncf=use_nncf,
    ), log=log)
    accepted = outcome.accepted
    package: BuiltPackage | None = None
    if accepted:
        reference_path: Path | None = None
        if dataset is not None:
            reference_path, note = build_detection_drift_reference(
                dataset, list(model.labels), spec, paths.builds_dir / build_id / DRIFT_REFERENCE_FILE,
                lambda images: run_detections(Path(model.onnx_path), images, spec, block, list(model.labels)))
        else:
            note = "no drift reference: the model names no dataset; devices report no drift windows for this package"
        outcome.notes.append({"profile": "all", "target": "drift-reference",
                              "status": "built" if reference_path is not None else "not_built", "message": note})
        package = build_package(
            packages_dir=paths.packages_dir, model_name=model.name, model_version=model.version,
            labels=list(model.labels), spec=spec, hardware_profiles=[p.name for p in targets],
            artifacts=[(a.path, a.artifact) for a in accepted],
            extra_files=[extra for a in accepted for extra in a.extra_files],
            detection=block, release=model.id or 0, drift_reference=reference_path,
        )
    with Session(engine) as session:
        assert model.id is not None
        if package is not None and session.get(Package, package.manifest.package_id) is None:
            crud.add_package(session, Package(
                id=package.manifest.package_id, model_version_id=model.id, model_version=model.version,
                hardware_profiles=[p.name for p in targets], manifest_sha256=package.manifest_sha256,
                size_bytes=package.size_bytes, path=str(package.directory.resolve()),
            ))
        store.add_build(session, ModelBuild(
            id=build_id, model_version_id=model.id, profiles=[p.name for p in targets],
            artifacts=[a.summary() for a in outcome.artifacts], notes=outcome.notes,
            package_id=package.manifest.package_id if package else None,
        ))
    return DetectionBuildResult(build_id=build_id, model_version=model.version, package=package, outcome=outcome,
                                notes=outcome.notes)


def build_detection_drift_reference(dataset: DetectionDataset, labels: list[str], spec: PreprocessSpec,
                                   destination: Path, run: Callable[[list[npt.NDArray[np.uint8]]],
                                                                    list[list[Detection]]],
                                   *, window_frames: int = DEFAULT_WINDOW_FRAMES) -> tuple[Path | None, str]:
    """Write a detection package's drift reference from the dataset's held-out images.

    ``run`` is the packaged detector, decoded as the device decodes it (boxes in frame
    pixels). Returns the file (``None`` when there are too few images) and a note for
    the build's notes.
    """
    images, split_names = reference_images(dataset)
    if len(images) < REFERENCE_MIN_IMAGES:
        return None, (f"no drift reference: the dataset's {split_names} split has {len(images)} readable images, "
                      f"a reference needs {REFERENCE_MIN_IMAGES}; devices report no drift windows for this package")
    found = run(images)
    reference = build_detection_reference(images, found, labels, spec, window_frames=window_frames,
                                          source=f"dataset {dataset.dataset_id} ({split_names})")
    destination.parent.mkdir(parents=True, exist_ok=True)
    destination.write_bytes(reference.to_bytes())
    boxes = sum(len(f) for f in found)
    return destination, (f"drift reference from the detector's {boxes} boxes on {len(images)} {split_names} images "
                         f"of dataset {dataset.dataset_id}, calibrated on windows of {window_frames} frames "
                         f"(k={reference.calibration.k}, h={reference.calibration.h})")
