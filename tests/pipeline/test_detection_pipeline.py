"""Detection through the cloud pipeline: YOLO-layout data, the grid detector, mAP gates, INT8 builds,
and the package the agent runs. One detector is trained per session (``trained_detector``, tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from sqlalchemy import Engine

from agent.capture.latest import FrameSlot
from agent.contract import MANIFEST_FILE, PackageManifest
from agent.contract.drift import DriftReference
from agent.infer.engine import InferenceEngine, load_model
from agent.profiles import load_profiles
from agent.runtime.select import Candidate, self_test
from agent.telemetry.window import WindowStats
from cloud.pipeline.data.dataset import decode_image
from cloud.pipeline.data.detection import (
    load_detection_tensors,
    parse_label_file,
    scan_detection_dataset,
)
from cloud.pipeline.data.detection_validate import validate_detection_dataset
from cloud.pipeline.data.synth_detection import write_detection_dataset
from cloud.pipeline.errors import PipelineInputError
from cloud.pipeline.evaluate.detection_gates import (
    DetectionThresholds,
    detection_validation_gate,
    detections_for,
)
from cloud.pipeline.optimize.detection_build import (
    DetectionBuildRequest,
    build_detection_for_profiles,
    evaluate_artifact,
    run_each,
)
from cloud.pipeline.optimize.runners import device_backend_runner
from cloud.pipeline.package.builder import build_package
from cloud.pipeline.service import PipelinePaths, build_model, ingest, train_model
from cloud.pipeline.train.detector import DetectorConfig, detection_block, train_detector
from cloud.pipeline.train.trainer import TrainConfig
from tests.support.models import TrainedDetector


def test_dataset_ids_follow_content_and_bad_labels_name_their_line(tmp_path: Path) -> None:
    root = write_detection_dataset(tmp_path / "a", images=12, seed=1)
    again = write_detection_dataset(tmp_path / "b", images=12, seed=1)
    first = scan_detection_dataset(root)
    assert first.dataset_id == scan_detection_dataset(again).dataset_id
    assert {s.split for s in first.samples} <= {"train", "val", "test"}
    assert first.metadata_fields == ["lighting", "camera"]
    assert all(1 <= len(s.boxes) <= 4 for s in first.samples)
    (root / "labels" / "00000.txt").write_text("0 0.5 0.5 0.2 0.2\n7 0.5 0.5 0.2 0.2\n")
    errors = validate_detection_dataset(scan_detection_dataset(root)).errors()
    assert [(e.kind, e.file) for e in errors] == [("class_out_of_range", "labels/00000.txt:2")]
    assert "class 7 is outside 0..2" in errors[0].reason
    (root / "labels" / "bad.txt").write_text("0 0.5 0.5 one 0.2\n")
    with pytest.raises(PipelineInputError, match=r"labels/bad\.txt:1: class must be an integer"):
        parse_label_file(root / "labels" / "bad.txt", "labels/bad.txt")


def test_training_is_reproducible(tmp_path: Path) -> None:
    dataset = scan_detection_dataset(write_detection_dataset(tmp_path / "tiny", images=30, seed=2))
    config = DetectorConfig(epochs=1, width=8, batch_size=8)
    first, second = train_detector(dataset, config), train_detector(dataset, config)
    for name, tensor in first.model.state_dict().items():
        assert np.array_equal(tensor.numpy(), second.model.state_dict()[name].numpy()), name


def test_trained_detector_passes_its_validation_gate(trained_detector: TrainedDetector) -> None:
    spec, labels = trained_detector.spec, trained_detector.dataset.labels
    test = load_detection_tensors(trained_detector.dataset.split("test"), spec)
    evaluation = evaluate_artifact("onnxruntime", trained_detector.onnx_path, test, block=detection_block(spec),
                                   labels=labels, spec=spec)
    decision = detection_validation_gate(evaluation, DetectionThresholds())
    assert decision.status == "validated", decision.reasons
    assert set(evaluation.metrics.ap_50) == {0, 1, 2}
    assert {"camera=cam0", "lighting=dim"} <= set(evaluation.slices)
    assert 0 < evaluation.map_50_95 < evaluation.map_50
    # The same gate rejects the same model when asked for more than it delivers.
    stricter = DetectionThresholds(min_map_50=min(1.0, evaluation.map_50 + 0.05))
    assert detection_validation_gate(evaluation, stricter).status == "rejected"


def test_int8_calibrated_on_one_blank_image_is_rejected_on_map_drop(trained_detector: TrainedDetector,
                                                                    tmp_path: Path) -> None:
    spec, labels = trained_detector.spec, trained_detector.dataset.labels
    test = load_detection_tensors(trained_detector.dataset.split("test"), spec)
    from agent.preprocess import preprocess

    blank = preprocess(np.full((150, 200, 3), 128, dtype=np.uint8), spec).astype(np.float32)
    outcome = build_detection_for_profiles(DetectionBuildRequest(
        fp32_onnx=trained_detector.onnx_path, spec=spec, labels=labels, block=detection_block(spec),
        profiles=[load_profiles()["jetson-orin"]], work_dir=tmp_path / "build", calibration=blank,
        evaluation=test, golden_inputs=test.x[:4]))
    by_precision = {a.artifact.precision: a for a in outcome.artifacts}
    assert by_precision["fp32"].accepted
    int8 = by_precision["int8"]
    assert int8.gate is not None and int8.gate.status == "rejected", int8.gate
    assert any("mAP@0.5 drop" in reason for reason in int8.gate.reasons), int8.gate.reasons
    assert int8.evaluation is not None and outcome.fp32_evaluation is not None
    assert outcome.fp32_evaluation.map_50 - int8.evaluation.map_50 > 0.01


def test_agent_decodes_the_package_as_the_cloud_gate_does(trained_detector: TrainedDetector, tmp_path: Path) -> None:
    spec, labels, block = trained_detector.spec, trained_detector.dataset.labels, detection_block(trained_detector.spec)
    samples = trained_detector.dataset.split("test")[:6]
    test = load_detection_tensors(samples, spec)
    cloud_boxes = detections_for(run_each(device_backend_runner("onnxruntime", trained_detector.onnx_path), test.x),
                                 test, block=block, labels=labels, spec=spec)
    outcome = build_detection_for_profiles(DetectionBuildRequest(
        fp32_onnx=trained_detector.onnx_path, spec=spec, labels=labels, block=block,
        profiles=[load_profiles()["jetson-orin"]], work_dir=tmp_path / "build", calibration=None, evaluation=None,
        golden_inputs=test.x[:2]))
    fp32 = next(a for a in outcome.artifacts if a.artifact.precision == "fp32")
    package = build_package(packages_dir=tmp_path / "packages", model_name="det", model_version="det-1",
                            labels=labels, spec=spec, artifacts=[(fp32.path, fp32.artifact)],
                            hardware_profiles=["jetson-orin"], extra_files=fp32.extra_files, detection=block)
    manifest = PackageManifest.from_bytes((package.directory / MANIFEST_FILE).read_bytes())
    # The device's install-time self-test accepts it (golden vectors, output shape for its decoder).
    measurement, _, _ = self_test(Candidate(manifest.artifacts[0]), manifest, package.directory, threads=1)
    assert measurement.accepted, measurement.reason
    model = load_model(manifest, package.directory)
    engine = InferenceEngine(FrameSlot("newest", depth=1), WindowStats())
    found_any = False
    for sample, expected in zip(samples, cloud_boxes, strict=True):
        frame = decode_image(sample.path)
        assert frame is not None
        on_device = engine.detect_frame(model, frame)
        assert on_device == expected
        found_any |= bool(on_device)
    assert found_any


def test_detection_dataset_through_the_service(trained_detector: TrainedDetector, engine: Engine,
                                               paths: PipelinePaths) -> None:
    """ingest → train → gate → build → package, with the package's detection block read back by the agent."""
    ingested = ingest(engine, paths, trained_detector.data_root)
    assert ingested.record.id == trained_detector.dataset.dataset_id
    # Two epochs: the wiring is under test here, not the detector's quality (the fixture covers that).
    outcome = train_model(engine, paths, dataset_id=ingested.record.id, name="scenes", show_progress=False,
                          config=TrainConfig(epochs=1, batch_size=16), spec=trained_detector.spec)
    assert outcome.detection is not None and outcome.status in ("validated", "rejected")
    built = build_model(engine, paths, version=outcome.model_version, profiles=["jetson-orin"],
                        allow_unvalidated=True, calibration_images=16)
    assert built.package is not None
    manifest = built.package.manifest
    assert manifest.task == "detection" and manifest.detection is not None
    assert manifest.detection.decoder == "yolo_raw" and manifest.labels == trained_detector.dataset.labels
    # The drift reference: the detector's boxes on the held-out split, which devices bin their windows against.
    assert manifest.drift_reference_file is not None
    reference = DriftReference.from_bytes((built.package.directory / manifest.drift_reference_file).read_bytes())
    assert reference.detection is not None and reference.labels == manifest.labels
    assert reference.detection.frames == reference.reference_size and not reference.class_counts
    assert any(n["target"] == "drift-reference" and n["status"] == "built" for n in built.notes)
    loaded = load_model(manifest, built.package.directory)
    assert loaded.manifest.detection == manifest.detection
    frame = cv2.imread(str(trained_detector.dataset.samples[0].path))
    assert isinstance(InferenceEngine(FrameSlot("newest", depth=1), WindowStats()).detect_frame(loaded, frame), list)


def test_the_exported_detector_runs_several_frames_in_one_batch(tmp_path: Path) -> None:
    """One loaded detector serves several cameras as one batch, so its export keeps the batch axis free."""
    import onnxruntime as ort
    import torch

    from cloud.pipeline.train.detector import GridDetector, detection_spec_for, export_detector_onnx

    torch.manual_seed(0)
    spec = detection_spec_for(96)
    path = export_detector_onnx(GridDetector(3, width=8, input_size=96), spec, tmp_path / "detector.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    frames = np.random.default_rng(0).uniform(0, 1, size=(3, *spec.input_shape(1)[1:])).astype(np.float32)

    batched = session.run(None, {"input": frames})[0]
    one_by_one = np.concatenate([session.run(None, {"input": frames[i:i + 1]})[0] for i in range(3)])

    assert batched.shape[0] == 3
    np.testing.assert_allclose(batched, one_by_one, rtol=1e-4, atol=1e-4)
