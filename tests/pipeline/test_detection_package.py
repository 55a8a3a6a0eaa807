"""A detection package built by the control plane is one the agent's manifest parser accepts as detection."""

from __future__ import annotations

from pathlib import Path

from agent.contract import MANIFEST_FILE, DetectionSpec, ModelArtifact, PackageManifest, PreprocessSpec
from cloud.pipeline.package.builder import build_package


def test_build_package_writes_the_task_and_detection_block(tmp_path: Path) -> None:
    model = tmp_path / "det.onnx"
    model.write_bytes(b"not a real model; packaging only hashes it")
    spec = PreprocessSpec(width=320, height=320, resize="letterbox", pad_value=114)
    detection = DetectionSpec(decoder="yolo_raw", input_width=320, input_height=320, score_threshold=0.3)

    built = build_package(packages_dir=tmp_path / "packages", model_name="det", model_version="det-1",
                          labels=["person", "car"], spec=spec,
                          artifacts=[(model, ModelArtifact(file="model.onnx", runtime="onnxruntime", precision="fp32",
                                                           input_name="images", output_name="output0"))],
                          hardware_profiles=["x86-cpu"], detection=detection)

    parsed = PackageManifest.from_bytes((built.directory / MANIFEST_FILE).read_bytes())
    assert parsed.task == "detection" and parsed.detection == detection
    assert parsed.preprocessing.pad_value == 114
