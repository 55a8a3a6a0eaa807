"""The detection contract on the device: manifests, refusal of unknown tasks/decoders, softmax once, telemetry."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from agent.capture.latest import FrameSlot
from agent.contract import (
    DEFAULT_MAX_REPORT_BYTES,
    DeployCommand,
    DetectionWindow,
    JobState,
    ModelArtifact,
    PackageFile,
    PackageManifest,
    PreprocessSpec,
    TelemetryReport,
    parse_report,
)
from agent.errors import IncompatiblePackageError, UnsupportedDecoderError, UnsupportedTaskError
from agent.infer.engine import InferenceEngine, load_model
from agent.telemetry.window import WindowStats
from agent.update.installer import fetch_and_verify
from agent.update.store import PackageStore

PROFILE = "x86-cpu"


def _file(name: str, data: bytes) -> PackageFile:
    return PackageFile(name=name, sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data))


def _manifest_document(package_id: str, model: bytes, **fields: Any) -> dict[str, Any]:
    manifest = PackageManifest(
        package_id=package_id, model_name="m", model_version=package_id, created_at=datetime.now(UTC),
        hardware_profiles=[PROFILE], labels=["a", "b"], preprocessing=PreprocessSpec(width=32, height=32),
        artifacts=[ModelArtifact(file="model.onnx", runtime="onnxruntime", precision="fp32")],
        files=[_file("model.onnx", model)])
    document: dict[str, Any] = json.loads(manifest.to_bytes())
    document.update(fields)
    return document


# --- manifest -----------------------------------------------------------------------------------
def test_classification_manifests_serialise_without_the_new_fields() -> None:
    document = _manifest_document("p-1", b"x")
    # Older agents forbid unknown fields: a classification manifest must not grow any.
    assert "task" not in document and "detection" not in document and "pad_value" not in document["preprocessing"]
    assert PackageManifest.model_validate(document).task == "classification"


def test_detection_manifest_needs_a_matching_detection_block() -> None:
    base = _manifest_document("p-1", b"x")
    block = {"decoder": "yolo_raw", "input_width": 32, "input_height": 32}
    manifest = PackageManifest.model_validate({**base, "task": "detection", "detection": block})
    assert manifest.detection is not None and manifest.detection.scores == "probabilities"
    assert json.loads(manifest.to_bytes())["detection"]["decoder"] == "yolo_raw"
    with pytest.raises(ValueError, match="needs a 'detection' block"):
        PackageManifest.model_validate({**base, "task": "detection"})
    with pytest.raises(ValueError, match="differs from the preprocessing size"):
        PackageManifest.model_validate({**base, "task": "detection", "detection": {**block, "input_width": 64}})
    with pytest.raises(ValueError, match="must not have"):
        PackageManifest.model_validate({**base, "detection": block})
    with pytest.raises(ValueError, match="Extra inputs"):
        PackageManifest.model_validate({**base, "task": "detection", "detection": {**block, "anchors": 3}})


# --- refusal at install -------------------------------------------------------------------------
@dataclass(frozen=True)
class _Target:
    length: int
    sha256: str
    custom: dict[str, object]
    data: bytes


@dataclass
class SignedSource:
    """An in-memory stand-in for the TUF client: it vouches for the bytes it was given."""

    files: dict[str, bytes] = field(default_factory=dict)

    def publish(self, package_id: str, manifest: bytes, model: bytes) -> str:
        self.files[f"{package_id}/manifest.json"] = manifest
        self.files[f"{package_id}/model.onnx"] = model
        return hashlib.sha256(manifest).hexdigest()

    def refresh(self) -> None:
        return None

    def target(self, path: str) -> _Target:
        data = self.files[path]
        return _Target(len(data), hashlib.sha256(data).hexdigest(), {"hardware_profiles": [PROFILE]}, data)

    def download(self, target: Any) -> bytes:
        return bytes(target.data)


def _install(source: SignedSource, store: PackageStore, package_id: str, manifest_sha256: str) -> PackageManifest:
    command = DeployCommand(device_id="cam-1", job_id=f"job-{package_id}", package_id=package_id,
                            model_version=package_id, manifest_url="unused", manifest_sha256=manifest_sha256, seq=1,
                            expires_at=datetime.now(UTC) + timedelta(hours=1))
    states: list[JobState] = []
    manifest, _ = fetch_and_verify(command, updater=source, store=store, hardware_profile=PROFILE,
                                   max_package_bytes=1 << 20, on_state=states.append)
    return manifest


def _tree(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(("fields", "error", "code", "named"), [
    ({"task": "segmentation"}, UnsupportedTaskError, "unsupported_task", "segmentation"),
    ({"task": "detection", "detection": {"decoder": "rtdetr", "input_width": 32, "input_height": 32}},
     UnsupportedDecoderError, "unsupported_decoder", "rtdetr"),
])
def test_agent_refuses_a_task_or_decoder_it_does_not_know_and_keeps_its_package(
        tmp_path: Path, fields: dict[str, Any], error: type[IncompatiblePackageError], code: str, named: str) -> None:
    source, store = SignedSource(), PackageStore(tmp_path / "state")
    model = b"model-bytes"
    v1 = json.dumps(_manifest_document("v1", model)).encode()
    assert _install(source, store, "v1", source.publish("v1", v1, model)).package_id == "v1"
    before = _tree(tmp_path / "state")
    newer = json.dumps(_manifest_document("v2", model, **fields)).encode()
    sha = source.publish("v2", newer, model)

    with pytest.raises(error) as refused:
        _install(source, store, "v2", sha)

    assert refused.value.code == code and named in str(refused.value)
    assert isinstance(refused.value, IncompatiblePackageError)
    assert _tree(tmp_path / "state") == before


# --- softmax once ------------------------------------------------------------------------------
def _classifier_ending_in_softmax(path: Path, logits: list[float]) -> Path:
    nodes = [
        helper.make_node("ReduceMean", ["input", "axes"], ["mean"], keepdims=1),
        helper.make_node("Flatten", ["mean"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "weight"], ["projected"]),
        helper.make_node("Add", ["projected", "bias"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes, "softmax_head",
        inputs=[helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 32, 32])],
        outputs=[helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [1, len(logits)])],
        initializer=[helper.make_tensor("axes", TensorProto.INT64, [3], [1, 2, 3]),
                     numpy_helper.from_array(np.full((1, len(logits)), 0.5, dtype=np.float32), "weight"),
                     numpy_helper.from_array(np.asarray([logits], dtype=np.float32), "bias")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_a_classifier_that_ends_in_softmax_is_not_softmaxed_twice(tmp_path: Path) -> None:
    import onnxruntime as ort

    path = _classifier_ending_in_softmax(tmp_path / "model.onnx", [2.0, 0.5, -1.0])
    spec = PreprocessSpec(width=32, height=32)
    manifest = PackageManifest(
        package_id="p", model_name="m", model_version="p", created_at=datetime.now(UTC), hardware_profiles=[PROFILE],
        labels=["a", "b", "c"], preprocessing=spec,
        artifacts=[ModelArtifact(file=path.name, runtime="onnxruntime", precision="fp32", output_name="probabilities",
                                 output_activation="none")],
        files=[_file(path.name, path.read_bytes())])
    frame = np.random.default_rng(1).integers(0, 255, size=(48, 64, 3), dtype=np.uint8)
    from agent.preprocess import preprocess

    raw = ort.InferenceSession(str(path)).run(None, {"input": preprocess(frame, spec)})[0][0]
    engine = InferenceEngine(FrameSlot("newest", depth=1), WindowStats())

    label, confidence = engine.infer_frame(load_model(manifest, tmp_path), frame)

    assert label == "a" and confidence == pytest.approx(float(raw.max()), abs=1e-6)
    # The same model declared as logits would be squashed again: visibly different.
    assert confidence > 0.7 and float(np.exp(raw).max() / np.exp(raw).sum()) < 0.6


# --- telemetry ---------------------------------------------------------------------------------
def test_detection_telemetry_validates_and_fits_the_report_cap() -> None:
    detection = DetectionWindow(frames=300, object_counts={f"class-{i:03d}": 10_000 + i for i in range(80)},
                                mean_box_score=0.61, boxes_per_frame=7.3, empty_frames=12)
    report = TelemetryReport(device_id="cam-1", window_s=60.0, frames=300, fps=5.0, detection=detection)
    raw = report.model_dump_json().encode()
    assert len(raw) < DEFAULT_MAX_REPORT_BYTES
    parsed = parse_report("telemetry", raw, "cam-1")
    assert isinstance(parsed, TelemetryReport) and parsed.detection == detection
    with pytest.raises(ValueError):
        DetectionWindow(frames=1, mean_box_score=1.5)
