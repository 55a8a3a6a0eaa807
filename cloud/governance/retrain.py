"""Retraining that closes the loop: previous dataset + accepted samples → train → validate →
release with a drift reference → canary rollout proposal.

Detection packages take the same steps with boxes (:mod:`cloud.governance._detection`,
chosen by the base model's task): mAP@0.5 instead of accuracy, and the pipeline's
detection build instead of :func:`package_release`.

Validation compares the new model with the one it replaces on two sets: the previous
dataset's test split (must be no worse, within ``tolerance``) and the held-out part
(val + test splits) of the new samples (must be better). Both numbers go into the
proposal and the audit log, pass or fail.

The new release's drift reference describes the data it is proposed for: the
unbiased random-stream samples of the devices that drifted (uncertainty-sampled
frames would bias it). Image statistics come from the device's own measurements
on the raw frame (a JPEG loses exactly the noise and sharpness they measure);
output statistics from the new model on the sample images.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from agent.contract import ModelArtifact, PackageManifest, PreprocessSpec, sha256_file
from agent.contract.drift import IMAGE_FEATURES, DriftReference
from cloud.core.timestamps import utc_now
from cloud.fleet import crud
from cloud.fleet.crud import Conflict
from cloud.fleet.tables import ModelVersion, Package
from cloud.governance import audit
from cloud.governance._common import MIN_REFERENCE_SAMPLES, RetrainSettings
from cloud.governance._common import fail as _fail
from cloud.governance.proposals import get_proposal, propose_rollout
from cloud.governance.sampling import estimate_random_stream
from cloud.governance.tables import DatasetLineage, RetrainingProposal
from cloud.monitor.reference import build_reference, run_logits
from cloud.monitor.tables import SampleBlob, SampleRecord
from cloud.pipeline.data.dataset import (
    DatasetVersion,
    Sample,
    dataset_id_for,
    decode_image,
    load_stored_dataset,
    store_dataset,
)
from cloud.pipeline.package.builder import build_package

if TYPE_CHECKING:
    from cloud.pipeline.train.trainer import EpochCallback

log = logging.getLogger(__name__)

__all__ = ["MIN_REFERENCE_SAMPLES", "RetrainSettings", "accuracy", "package_release", "repackage_with_reference",
           "retrain"]


def accuracy(onnx_path: Path, images: list[np.ndarray], labels: list[int], spec: PreprocessSpec) -> float:
    if not images:
        return float("nan")
    predictions = run_logits(onnx_path, images, spec).argmax(axis=1)
    return float(np.mean(predictions == np.asarray(labels)))


def package_release(session: Session, *, onnx_path: Path, labels: list[str], model_name: str, dataset_id: str,
                    packages_dir: Path, hardware_profiles: list[str], reference: DriftReference,
                    spec: PreprocessSpec, metrics: dict[str, Any] | None = None,
                    hyperparameters: dict[str, Any] | None = None, status: str = "registered") -> Package:
    """Register ``onnx_path`` as the next version of ``model_name`` and build its package with ``reference``."""
    version = crud.next_model_version(session, model_name)
    model = crud.add_model_version(session, ModelVersion(
        name=model_name, version=version, dataset_id=dataset_id, status=status, labels=labels,
        hyperparameters=hyperparameters or {}, metrics=metrics or {}, onnx_path=str(onnx_path),
        onnx_sha256=sha256_file(onnx_path)))
    reference_path = onnx_path.parent / "drift_reference.json"
    reference_path.write_bytes(reference.to_bytes())
    built = build_package(packages_dir=packages_dir, model_name=model_name, model_version=version, labels=labels,
                          spec=spec, hardware_profiles=hardware_profiles,
                          artifacts=[(onnx_path, ModelArtifact(file="model.onnx", runtime="onnxruntime",
                                                               precision="fp32"))],
                          drift_reference=reference_path, release=model.id or 0)
    assert model.id is not None
    return crud.add_package(session, Package(
        id=built.manifest.package_id, model_version_id=model.id, model_version=version,
        hardware_profiles=hardware_profiles, manifest_sha256=built.manifest_sha256, size_bytes=built.size_bytes,
        path=str(built.directory.resolve())))


def retrain(engine: Engine, proposal_id: str, settings: RetrainSettings, *, actor: str,
            on_epoch: EpochCallback | None = None) -> RetrainingProposal:
    """Run the proposal's retraining end to end. Returns the updated proposal.

    ``on_epoch`` reports training progress; whatever it raises (a job's cancel) stops the
    retraining before anything is released, and the proposal is open again.

    Raises:
        NotFound: unknown proposal.
        Conflict: the proposal is not open, has no base model or no labelled samples.
        PipelineInputError: the base dataset is not in ``settings.datasets_dir``.
    """
    with Session(engine) as session:
        proposal = get_proposal(session, proposal_id)
        if proposal.state != "open":
            raise Conflict(f"proposal {proposal.id} is {proposal.state}; only open proposals can be retrained")
        if proposal.base_package_id is None or proposal.base_dataset_id is None:
            raise Conflict(f"proposal {proposal.id} has no base release to retrain from")
        base_package = crud.get_package(session, proposal.base_package_id)
        base_model = session.get(ModelVersion, base_package.model_version_id)
        assert base_model is not None
        run: Callable[[], RetrainingProposal]
        if (base_model.hyperparameters or {}).get("task") == "detection":
            # Imported here: it pulls in torch, which the API and CLI keep out of start-up.
            from cloud.governance import _detection

            _detection.check_retrainable(proposal, base_model)
            previous_detection = _detection.base_dataset(settings, proposal)
            boxed = _detection.accepted_box_samples(session, proposal, previous_detection.labels)
            if not boxed:
                raise Conflict(f"proposal {proposal.id} has no samples labelled with boxes from "
                               f"{', '.join(proposal.device_ids)}")
            accepted_count = len(boxed)

            def run() -> RetrainingProposal:
                return _detection.retrain_detection(engine, session, proposal, base_model, previous_detection,
                                                    boxed, settings, actor=actor, on_epoch=on_epoch)
        else:
            # First, as it is the usual reason to wait: it says how long, and which settings change that.
            stream = estimate_random_stream(session, proposal.device_ids, settings.min_reference_samples)
            if stream.missing:
                raise Conflict(f"proposal {proposal.id} cannot be retrained yet: {stream.explain()}")
            previous = load_stored_dataset(settings.datasets_dir, proposal.base_dataset_id)
            # In content order, not arrival order: training visits the dataset in list order, so
            # the same samples arriving in another order trained another model (the old test set
            # then swung by 3-5 pp between runs of the same test).
            accepted = list(session.exec(select(SampleRecord).where(
                col(SampleRecord.status) == "labelled", col(SampleRecord.device_id).in_(proposal.device_ids),
                col(SampleRecord.image_sha256).is_not(None)).order_by(col(SampleRecord.image_sha256),
                                                                      col(SampleRecord.sample_id))))
            accepted = [s for s in accepted if s.label in previous.labels]
            if not accepted:
                raise Conflict(f"proposal {proposal.id} has no labelled samples from "
                               f"{', '.join(proposal.device_ids)}")
            accepted_count = len(accepted)

            def run() -> RetrainingProposal:
                return _retrain_open(session, proposal, base_package, base_model, previous, accepted, settings,
                                     actor=actor, on_epoch=on_epoch)
        proposal.state, proposal.updated_at = "training", utc_now()
        session.add(proposal)
        audit.record(session, actor=actor, action="retraining.started", subject_type="retraining_proposal",
                     subject_id=proposal.id, details={"base_dataset_id": proposal.base_dataset_id,
                                                      "accepted_samples": accepted_count})
        session.commit()

        try:
            return run()
        except BaseException as exc:
            session.rollback()
            session.refresh(proposal)
            if proposal.state == "training":
                # Nothing was released: the proposal can be retrained again.
                proposal.state, proposal.updated_at = "open", utc_now()
                session.add(proposal)
                audit.record(session, actor=actor, action="retraining.stopped", subject_type="retraining_proposal",
                             subject_id=proposal.id, details={"reason": f"{type(exc).__name__}: {exc}"[:500]})
                session.commit()
            raise


def _retrain_open(session: Session, proposal: RetrainingProposal, base_package: Package, base_model: ModelVersion,
                  previous: DatasetVersion, accepted: list[SampleRecord], settings: RetrainSettings, *, actor: str,
                  on_epoch: EpochCallback | None) -> RetrainingProposal:
    # Imported here: it pulls in torch, which the API and CLI keep out of start-up.
    from cloud.pipeline.train.trainer import TrainConfig, export_onnx, train

    # 1. The new dataset version: previous + accepted samples (content-addressed).
    sample_dir = settings.datasets_dir / "device-samples"
    sample_dir.mkdir(parents=True, exist_ok=True)
    added: list[Sample] = []
    for record in accepted:
        blob = session.get(SampleBlob, record.image_sha256)
        if blob is None:
            continue
        path = sample_dir / f"{record.image_sha256}.jpg"
        if not path.exists():
            path.write_bytes(blob.content)
        assert record.label is not None and record.image_sha256 is not None
        added.append(Sample(path=path, label=record.label, sha256=record.image_sha256,
                            relative=f"device-samples/{record.device_id}/{record.sample_id}.jpg",
                            metadata=(("device", record.device_id), ("sampler", record.sampler),
                                      ("source", "device-sample"))))
    fields = sorted({*previous.metadata_fields, "device", "sampler", "source"})
    samples = [*previous.samples, *added]
    draft = DatasetVersion(root=settings.datasets_dir, dataset_id=dataset_id_for(samples), labels=previous.labels,
                           samples=samples, metadata_fields=fields)
    dataset = store_dataset(draft, settings.datasets_dir)
    if session.get(DatasetLineage, dataset.dataset_id) is None:
        session.add(DatasetLineage(dataset_id=dataset.dataset_id, parent_dataset_id=previous.dataset_id,
                                   sample_ids=sorted(r.sample_id for r in accepted),
                                   device_ids=sorted({r.device_id for r in accepted}),
                                   store_path=str(settings.datasets_dir), proposal_id=proposal.id,
                                   created_by=actor))
    proposal.new_dataset_id = dataset.dataset_id
    audit.record(session, actor=actor, action="dataset.created", subject_type="dataset",
                 subject_id=dataset.dataset_id, details={"parent": previous.dataset_id, "added": len(added),
                                                         "images": len(dataset.samples)})
    session.add(proposal)
    session.commit()

    # 2. Train.
    spec = PreprocessSpec.model_validate(_manifest_spec(base_package))
    result = train(dataset, TrainConfig(epochs=settings.epochs, seed=settings.seed), spec, show_progress=False,
                   on_epoch=on_epoch)
    onnx_path = export_onnx(result.model, spec, settings.models_dir / base_model.name / dataset.dataset_id /
                            f"seed{settings.seed}" / "model.onnx")

    # 3. Validate: old test set and the held-out new drifted data, old model vs new.
    new_ids = {s.sha256 for s in added}
    old_test = [s for s in previous.split("test")]
    drift_held_out = [s for s in dataset.samples if s.sha256 in new_ids and s.split != "train"]
    numbers: dict[str, Any] = {"old_test_images": len(old_test), "drift_held_out_images": len(drift_held_out),
                               "train_images": len(dataset.split("train")), "added_samples": len(added)}
    for name, subset in (("old_test", old_test), ("drift", drift_held_out)):
        images, targets = _load(subset, dataset.labels)
        numbers[f"{name}_accuracy_before"] = round(accuracy(Path(base_model.onnx_path), images, targets, spec), 4)
        numbers[f"{name}_accuracy_after"] = round(accuracy(onnx_path, images, targets, spec), 4)
    passed = (numbers["old_test_accuracy_after"] >= numbers["old_test_accuracy_before"] - settings.tolerance
              and numbers["drift_accuracy_after"] > numbers["drift_accuracy_before"] + settings.min_gain)
    audit.record(session, actor=actor, action="retraining.validated", subject_type="retraining_proposal",
                 subject_id=proposal.id, details={**numbers, "passed": passed})
    session.commit()
    if not passed:
        _fail(session, proposal, actor, "the new model is not better on the drifted data, or worse on the old test set",
              numbers)
        # _fail committed: reload before the session closes, or the caller gets an expired, empty row.
        session.refresh(proposal)
        return proposal

    # 4. Release with a reference for the devices it is proposed for.
    reference = _reference_for(session, proposal, onnx_path, spec, dataset.labels, settings)
    package = package_release(session, onnx_path=onnx_path, labels=dataset.labels, model_name=base_model.name,
                              dataset_id=dataset.dataset_id, packages_dir=settings.packages_dir,
                              hardware_profiles=list(settings.hardware_profiles), reference=reference, spec=spec,
                              metrics={**result.metrics, "validation": numbers},
                              hyperparameters=result.hyperparameters)
    proposal.new_model_version, proposal.new_package_id = package.model_version, package.id
    proposal.validation, proposal.state, proposal.updated_at = {**numbers, "passed": True}, "validated", utc_now()
    session.add(proposal)
    audit.record(session, actor=actor, action="release.built", subject_type="package", subject_id=package.id,
                 details={"model_version": package.model_version, "dataset_id": dataset.dataset_id,
                          "reference_frames": reference.reference_size})
    session.commit()
    propose_rollout(session, proposal, actor=actor, auto_approve=settings.auto_approve)
    session.refresh(proposal)
    return proposal


def _manifest_spec(package: Package) -> dict[str, Any]:
    import json

    manifest = json.loads((Path(package.path) / "manifest.json").read_text())
    spec: dict[str, Any] = manifest["preprocessing"]
    return spec


def _load(samples: list[Sample], labels: list[str]) -> tuple[list[np.ndarray], list[int]]:
    images, targets = [], []
    for sample in samples:
        image = decode_image(sample.path)
        if image is not None:
            images.append(image)
            targets.append(labels.index(sample.label))
    return images, targets


def _random_samples(session: Session, proposal: RetrainingProposal) -> list[SampleRecord]:
    return list(session.exec(select(SampleRecord).where(
        col(SampleRecord.device_id).in_(proposal.device_ids), col(SampleRecord.sampler) == "random",
        col(SampleRecord.image_sha256).is_not(None))))


def _reference_for(session: Session, proposal: RetrainingProposal, onnx_path: Path, spec: PreprocessSpec,
                   labels: list[str], settings: RetrainSettings) -> DriftReference:
    records = _random_samples(session, proposal)
    images, features = [], []
    for record in records:
        blob = session.get(SampleBlob, record.image_sha256)
        if blob is None or not all(name in record.features for name in IMAGE_FEATURES):
            continue
        image = cv2.imdecode(np.frombuffer(blob.content, dtype=np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            continue
        images.append(np.asarray(image, dtype=np.uint8))
        features.append([record.features[name] for name in IMAGE_FEATURES])
    if len(images) < settings.min_reference_samples:
        raise Conflict(f"only {len(images)} usable random-stream samples; a reference needs "
                       f"{settings.min_reference_samples} (EDGEFLEET_MONITOR_MIN_REFERENCE_SAMPLES)")
    logits = run_logits(onnx_path, images, spec)
    return build_reference(images, logits, labels, spec, window_frames=settings.reference_window_frames,
                           image_features=np.asarray(features, dtype=np.float64),
                           source=f"random samples of {', '.join(proposal.device_ids)}"[:256])


def repackage_with_reference(session: Session, package_id: str, images: list[np.ndarray], *,
                             packages_dir: Path, window_frames: int = 300, source: str = "",
                             actor: str = "operator") -> Package:
    """A new package of the same model version and files, plus a drift reference built from ``images``.

    For releases built before they carried a reference (packages are immutable: their
    manifest hash pins every file, so the reference makes a new package id). Idempotent:
    the same images give the same package, returned as registered the first time.

    Raises:
        NotFound: unknown package.
        ValueError: fewer than 64 images, or a package without an ONNX Runtime artifact.
    """
    package = crud.get_package(session, package_id)
    directory = Path(package.path)
    manifest = PackageManifest.from_bytes((directory / "manifest.json").read_bytes())
    onnx_artifact = next((a for a in manifest.artifacts if a.runtime == "onnxruntime"), None)
    if onnx_artifact is None:
        raise ValueError(f"package {package_id} has no ONNX Runtime artifact to compute the reference with")
    logits = run_logits(directory / onnx_artifact.file, images, manifest.preprocessing)
    reference = build_reference(images, logits, list(manifest.labels), manifest.preprocessing,
                                activation=onnx_artifact.output_activation, window_frames=window_frames,
                                source=source[:256])
    staging = packages_dir / f".reference-{package_id}"
    staging.mkdir(parents=True, exist_ok=True)
    reference_path = staging / "drift_reference.json"
    reference_path.write_bytes(reference.to_bytes())
    artifact_files = {a.file for a in manifest.artifacts}
    extras = [directory / f.name for f in manifest.files
              if f.name not in artifact_files and f.name != manifest.drift_reference_file]
    built = build_package(packages_dir=packages_dir, model_name=manifest.model_name,
                          model_version=manifest.model_version, labels=list(manifest.labels),
                          spec=manifest.preprocessing, hardware_profiles=list(manifest.hardware_profiles),
                          artifacts=[(directory / a.file, a) for a in manifest.artifacts], extra_files=extras,
                          drift_reference=reference_path, release=manifest.release)
    shutil.rmtree(staging, ignore_errors=True)
    existing = session.get(Package, built.manifest.package_id)
    if existing is not None:
        # The same images gave the same reference, hence the same package: it is already registered.
        return existing
    new = crud.add_package(session, Package(
        id=built.manifest.package_id, model_version_id=package.model_version_id, model_version=package.model_version,
        hardware_profiles=list(manifest.hardware_profiles), manifest_sha256=built.manifest_sha256,
        size_bytes=built.size_bytes, path=str(built.directory.resolve())))
    audit.record(session, actor=actor, action="release.reference_added", subject_type="package",
                 subject_id=new.id, details={"from_package": package_id, "reference_frames": reference.reference_size,
                                             "k": reference.calibration.k, "h": reference.calibration.h})
    session.commit()
    return new
