"""Governed retraining of a detection package (``retrain`` dispatches here on the model's task).

The same loop as for classifiers, with boxes: the samples labelled with boxes join the
base model's YOLO-layout dataset as a new content-addressed version; the detector is
trained again from scratch with the base model's own configuration (same seed, so the
same data trains the same weights); validation scores mAP@0.5 through the agent's
decoder, old model against new, on the old test split (may drop at most
``tolerance``) and on the labelled samples held out of training (must gain more than
``min_gain``), and the new model must pass its own validation gate (the thresholds its
predecessor passed, unless the settings name others). The release is
built and packaged by the pipeline's detection build, the path every trained detector
takes, so it carries whatever that path adds (artifacts per profile, INT8 gate,
detection block, drift reference).

Imported lazily: it pulls in torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from agent.contract import DetectionSpec, PreprocessSpec
from cloud.core.timestamps import utc_now
from cloud.fleet import crud
from cloud.fleet.crud import Conflict
from cloud.fleet.tables import ModelVersion
from cloud.governance import audit
from cloud.governance._common import RetrainSettings, fail
from cloud.governance.proposals import propose_rollout
from cloud.governance.tables import DatasetLineage, RetrainingProposal, SampleBoxLabel
from cloud.monitor.tables import SampleBlob, SampleRecord
from cloud.pipeline.data.detection import (
    DetectionDataset,
    DetectionSample,
    YoloBox,
    detection_dataset_id,
    load_detection_tensors,
    load_stored_detection_dataset,
    store_detection_dataset,
)
from cloud.pipeline.detection_service import build_detection_model, train_detection_model
from cloud.pipeline.evaluate.detection_gates import DetectionThresholds
from cloud.pipeline.optimize.detection_build import evaluate_artifact
from cloud.pipeline.registry import store
from cloud.pipeline.service import PipelinePaths, resolve_profiles
from cloud.pipeline.train.detector import DetectorConfig

__all__ = ["BoxSample", "accepted_box_samples", "base_dataset", "check_retrainable", "retrain_detection",
           "retraining_reasons", "yolo_boxes"]

BoxSample = tuple[SampleRecord, list[dict[str, Any]]]


def yolo_boxes(boxes: list[dict[str, Any]], labels: list[str]) -> tuple[YoloBox, ...]:
    """Box labels (fractions of the frame, x1 y1 x2 y2) as YOLO rows (class id, cx, cy, w, h).

    Raises:
        ValueError: a box names a class that is not in ``labels``.
    """
    rows: list[YoloBox] = []
    for box in boxes:
        x1, y1, x2, y2 = (float(box[k]) for k in ("x1", "y1", "x2", "y2"))
        rows.append((labels.index(box["label"]), round((x1 + x2) / 2, 6), round((y1 + y2) / 2, 6),
                     round(x2 - x1, 6), round(y2 - y1, 6)))
    return tuple(rows)


def retraining_reasons(numbers: dict[str, Any], *, gate_status: str, tolerance: float,
                       min_gain: float) -> list[str]:
    """Why a retrained detector must not be released (empty: it may be). Pure: over the validation numbers."""
    reasons: list[str] = []
    if gate_status != "validated":
        reasons.append(f"the new model is {gate_status} by its own validation gate "
                       f"(mAP@0.5 {numbers.get('new_test_map_50')} on the new test split)")
    before, after = numbers["old_test_map_50_before"], numbers["old_test_map_50_after"]
    if after < before - tolerance:
        reasons.append(f"mAP@0.5 on the old test set drops from {before} to {after}, more than the "
                       f"tolerance {tolerance}")
    if not numbers["drift_held_out_images"]:
        reasons.append("no labelled sample was held out of training: nothing to show the new model is better "
                       "on the drifted data (label more samples)")
    elif not numbers["drift_map_50_after"] > numbers["drift_map_50_before"] + min_gain:
        reasons.append(f"mAP@0.5 on the held-out drifted samples goes from {numbers['drift_map_50_before']} to "
                       f"{numbers['drift_map_50_after']}: not more than the required gain {min_gain}")
    return reasons


def accepted_box_samples(session: Session, proposal: RetrainingProposal, labels: list[str]) -> list[BoxSample]:
    """The proposal's devices' samples labelled with boxes, in content order (training visits them in
    list order, so arrival order must not change the model). Samples naming a class the base model
    does not have are left out: a new class needs a new dataset, not a retraining."""
    records = list(session.exec(select(SampleRecord).where(
        col(SampleRecord.status) == "labelled", col(SampleRecord.device_id).in_(proposal.device_ids),
        col(SampleRecord.image_sha256).is_not(None)).order_by(col(SampleRecord.image_sha256),
                                                              col(SampleRecord.sample_id))))
    boxes = {row.sample_id: list(row.boxes) for row in session.exec(select(SampleBoxLabel).where(
        col(SampleBoxLabel.sample_id).in_([r.sample_id for r in records])))} if records else {}
    return [(record, boxes[record.sample_id]) for record in records
            if record.sample_id in boxes and all(b["label"] in labels for b in boxes[record.sample_id])]


def check_retrainable(proposal: RetrainingProposal, base_model: ModelVersion) -> None:
    """Raises ``Conflict`` unless the base detector was trained by the pipeline (its configuration is known)."""
    saved = base_model.hyperparameters or {}
    if saved.get("architecture") != "grid-detector" or "preprocessing" not in saved or "detection" not in saved:
        raise Conflict(f"proposal {proposal.id}: detector {base_model.version} was not trained by the pipeline "
                       "(imported, or its configuration is not recorded), so it cannot be retrained with the same "
                       "configuration; train a detector on the labelled data with `edgefleet train` instead")


def base_dataset(settings: RetrainSettings, proposal: RetrainingProposal) -> DetectionDataset:
    """Raises ``PipelineInputError`` when the base dataset is not a stored detection dataset."""
    assert proposal.base_dataset_id is not None
    return load_stored_detection_dataset(settings.datasets_dir, proposal.base_dataset_id)


def _paths(settings: RetrainSettings) -> PipelinePaths:
    return PipelinePaths(datasets_dir=settings.datasets_dir, models_dir=settings.models_dir,
                         packages_dir=settings.packages_dir,
                         builds_dir=settings.builds_dir or settings.models_dir.parent / "builds")


def _config(base_model: ModelVersion, settings: RetrainSettings) -> DetectorConfig:
    """The base model's training configuration; ``settings.detector_epochs`` overrides its epochs."""
    saved = base_model.hyperparameters or {}
    known = {f.name for f in fields(DetectorConfig)}
    values = {k: v for k, v in saved.items() if k in known}
    if settings.detector_epochs is not None:
        values["epochs"] = settings.detector_epochs
    return DetectorConfig(**values)


def _thresholds(session: Session, base_model: ModelVersion, settings: RetrainSettings) -> DetectionThresholds:
    """The validation gate the new detector must pass: the settings', else the one its predecessor passed
    (kept in its lineage), else the pipeline's default."""
    if settings.detection_thresholds is not None:
        return settings.detection_thresholds
    lineage = store.get_lineage(session, base_model.id) if base_model.id is not None else None
    saved = (lineage.gate.get("thresholds") if lineage is not None else None) or {}
    known = {f.name for f in fields(DetectionThresholds)}
    return DetectionThresholds(**{k: v for k, v in saved.items() if k in known})


def retrain_detection(engine: Engine, session: Session, proposal: RetrainingProposal, base_model: ModelVersion, previous: DetectionDataset, accepted: list[BoxSample],
                      settings: RetrainSettings, *, actor: str,
                      on_epoch: Callable[[int, int, float], None] | None) -> RetrainingProposal:
    """New dataset version → train → validate → build and package → rollout proposal. The proposal is training."""
    # 1. The new dataset version: the base version + the labelled samples, YOLO layout, content-addressed.
    sample_dir = settings.datasets_dir / "device-samples"
    sample_dir.mkdir(parents=True, exist_ok=True)
    added: list[DetectionSample] = []
    for record, boxes in accepted:
        blob = session.get(SampleBlob, record.image_sha256)
        if blob is None:
            continue  # deleted by retention since it was labelled
        assert record.image_sha256 is not None
        path = sample_dir / f"{record.image_sha256}.jpg"
        if not path.exists():
            path.write_bytes(blob.content)
        added.append(DetectionSample(path=path, sha256=record.image_sha256, boxes=yolo_boxes(boxes, previous.labels),
                                     relative=f"device-samples/{record.device_id}/{record.sample_id}.jpg",
                                     metadata=(("device", record.device_id), ("sampler", record.sampler),
                                               ("source", "device-sample"))))
    samples = [*previous.samples, *added]
    draft = DetectionDataset(root=settings.datasets_dir, dataset_id=detection_dataset_id(previous.labels, samples),
                             labels=previous.labels, samples=samples,
                             metadata_fields=sorted({*previous.metadata_fields, "device", "sampler", "source"}))
    dataset = store_detection_dataset(draft, settings.datasets_dir)
    if session.get(DatasetLineage, dataset.dataset_id) is None:
        session.add(DatasetLineage(dataset_id=dataset.dataset_id, parent_dataset_id=previous.dataset_id,
                                   sample_ids=sorted(r.sample_id for r, _ in accepted),
                                   device_ids=sorted({r.device_id for r, _ in accepted}),
                                   store_path=str(settings.datasets_dir), proposal_id=proposal.id, created_by=actor))
    proposal.new_dataset_id = dataset.dataset_id
    audit.record(session, actor=actor, action="dataset.created", subject_type="dataset",
                 subject_id=dataset.dataset_id, details={"parent": previous.dataset_id, "added": len(added),
                                                         "images": len(dataset.samples), "task": "detection"})
    session.add(proposal)
    session.commit()

    # 2. Train with the base model's configuration, gated like any trained detector.
    spec = PreprocessSpec.model_validate(base_model.hyperparameters["preprocessing"])
    block = DetectionSpec.model_validate(base_model.hyperparameters["detection"])
    paths = _paths(settings)
    outcome = train_detection_model(engine, paths, dataset_id=dataset.dataset_id, name=base_model.name,
                                    config=_config(base_model, settings), spec=spec,
                                    thresholds=_thresholds(session, base_model, settings), block=block,
                                    on_epoch=on_epoch)
    new_model = crud.get_model_version(session, outcome.model_version)

    # 3. Validate: old model against new on the old test split and on the held-out drifted samples.
    new_ids = {s.sha256 for s in added}
    subsets = {"old_test": previous.split("test"),
               "drift": [s for s in dataset.samples if s.sha256 in new_ids and s.split != "train"]}
    numbers: dict[str, Any] = {"task": "detection", "metric": "map_50", "old_test_images": len(subsets["old_test"]),
                               "drift_held_out_images": len(subsets["drift"]),
                               "train_images": len(dataset.split("train")), "added_samples": len(added),
                               "new_model_gate": outcome.status,
                               "new_test_map_50": round(outcome.evaluation.map_50, 4) if outcome.evaluation else None}
    for name, subset in subsets.items():
        tensors = load_detection_tensors(subset, spec)
        for when, model in (("before", base_model), ("after", new_model)):
            evaluation = (evaluate_artifact("onnxruntime", Path(model.onnx_path), tensors, block=block,
                                            labels=dataset.labels, spec=spec) if len(tensors) else None)
            numbers[f"{name}_map_50_{when}"] = round(evaluation.map_50, 4) if evaluation is not None else 0.0
    reasons = retraining_reasons(numbers, gate_status=outcome.status, tolerance=settings.tolerance,
                                 min_gain=settings.min_gain)
    audit.record(session, actor=actor, action="retraining.validated", subject_type="retraining_proposal",
                 subject_id=proposal.id, details={**numbers, "passed": not reasons, "reasons": reasons})
    session.commit()
    if reasons:
        # The pipeline registered it as validated by its own gate; it is not fit to replace its predecessor.
        store.set_status(session, new_model, "rejected")
        fail(session, proposal, actor, "; ".join(reasons), numbers)
        session.refresh(proposal)
        return proposal

    # 4. Build and package through the pipeline's detection build, as for any trained detector.
    built = build_detection_model(engine, paths, version=new_model.version,
                                  profiles=resolve_profiles(list(settings.hardware_profiles)))
    if built.package is None:
        rejected = ", ".join(f"{a.artifact.runtime}/{a.artifact.precision}" for a in built.outcome.artifacts)
        fail(session, proposal, actor, f"no artifact of the new model passed its build gates (rejected: "
                                        f"{rejected or 'none built'}; build {built.build_id})", numbers)
        session.refresh(proposal)
        return proposal
    package_id = built.package.manifest.package_id
    proposal.new_model_version, proposal.new_package_id = new_model.version, package_id
    proposal.validation, proposal.state, proposal.updated_at = {**numbers, "passed": True}, "validated", utc_now()
    session.add(proposal)
    audit.record(session, actor=actor, action="release.built", subject_type="package", subject_id=package_id,
                 details={"model_version": new_model.version, "dataset_id": dataset.dataset_id,
                          "build_id": built.build_id,
                          "drift_reference": built.package.manifest.drift_reference_file is not None})
    session.commit()
    propose_rollout(session, proposal, actor=actor, auto_approve=settings.auto_approve)
    session.refresh(proposal)
    return proposal
