"""Tiny detection models with a recall you choose (ONNX built with onnx.helper, no torch).

:func:`yolo_raw_detector` writes a graph whose ``1 x (4+C) x N`` yolo_raw output holds
the boxes you give it (scores above the threshold) and background anchors (below it),
plus 0 x the input's mean so ONNX Runtime really reads the frame. A "good" detector
emits every object of :data:`SCENE`; :func:`half_recall` keeps every other one, the
"bad" release that misses half the objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

from agent.contract import DetectionSpec, ModelArtifact, PreprocessSpec, sha256_file

if TYPE_CHECKING:
    from cloud.pipeline.quickstart import PipelineResult
    from cloud.server import ControlPlane

DET_LABELS = ["person", "car", "dog"]
INPUT_SIZE = 64
DET_SPEC = PreprocessSpec(width=INPUT_SIZE, height=INPUT_SIZE, resize="stretch", interpolation="area")
DETECTION = DetectionSpec(decoder="yolo_raw", input_width=INPUT_SIZE, input_height=INPUT_SIZE,
                          score_threshold=0.25, iou_threshold=0.45)
ANCHORS = 32


@dataclass(frozen=True)
class TrueBox:
    """One object in model-input pixels (x1, y1, x2, y2), its class index and the score a detector gives it."""

    x1: float
    y1: float
    x2: float
    y2: float
    class_id: int
    score: float


# Six well-separated objects of three classes (two each), scores from 0.3 to 0.9.
SCENE: tuple[TrueBox, ...] = (
    TrueBox(2, 2, 18, 30, 0, 0.9), TrueBox(22, 2, 38, 30, 0, 0.6),
    TrueBox(42, 2, 62, 14, 1, 0.8), TrueBox(42, 18, 62, 30, 1, 0.3),
    TrueBox(2, 36, 30, 62, 2, 0.7), TrueBox(34, 36, 62, 62, 2, 0.5),
)


def half_recall(boxes: tuple[TrueBox, ...] = SCENE) -> tuple[TrueBox, ...]:
    """Every other object: one of each class's two, so the class mix stays the same."""
    return boxes[::2]


def yolo_raw_output(boxes: tuple[TrueBox, ...], *, num_classes: int = len(DET_LABELS),
                    anchors: int = ANCHORS) -> npt.NDArray[np.float32]:
    """``1 x (4+C) x anchors``: one anchor per box, the rest background scoring 0.01."""
    if len(boxes) > anchors:
        raise ValueError(f"{len(boxes)} boxes do not fit {anchors} anchors")
    output = np.zeros((1, 4 + num_classes, anchors), dtype=np.float32)
    output[0, :4] = 4.0
    output[0, 4:] = 0.01
    for anchor, box in enumerate(boxes):
        output[0, :4, anchor] = [(box.x1 + box.x2) / 2, (box.y1 + box.y2) / 2, box.x2 - box.x1, box.y2 - box.y1]
        output[0, 4 + box.class_id, anchor] = box.score
    return output


def yolo_raw_detector(path: Path, boxes: tuple[TrueBox, ...] = SCENE) -> Path:
    """An ONNX detector with input 1x3xSxS named ``input`` whose output is :func:`yolo_raw_output` of ``boxes``."""
    return constant_output_onnx(path, yolo_raw_output(boxes), input_name="input", input_size=INPUT_SIZE)


def constant_output_onnx(path: Path, raw: npt.NDArray[np.float32], *, input_name: str, input_size: int) -> Path:
    """A model with input 1x3xSxS whose output ``output0`` is exactly ``raw`` plus 0 x the input's mean,
    so the runtime really runs the graph on the frame."""
    nodes = [
        helper.make_node("ReduceMean", [input_name], ["mean"], keepdims=0),
        helper.make_node("Mul", ["mean", "zero"], ["zeroed"]),
        helper.make_node("Add", ["raw", "zeroed"], ["output0"]),
    ]
    graph = helper.make_graph(
        nodes, "detector",
        inputs=[helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [1, 3, input_size, input_size])],
        outputs=[helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(raw.shape))],
        initializer=[numpy_helper.from_array(raw, "raw"), helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def publish_detector(plane: ControlPlane, workdir: Path, name: str, boxes: tuple[TrueBox, ...], *,
                     profiles: list[str]) -> PipelineResult:
    """Register ``name``'s next version as a detection package (FP32 ONNX) and list it in TUF."""
    from sqlmodel import Session

    from cloud.fleet import crud
    from cloud.fleet.tables import ModelVersion, Package
    from cloud.pipeline.package.builder import build_package
    from cloud.pipeline.quickstart import PipelineResult, code_version

    workdir.mkdir(parents=True, exist_ok=True)
    onnx_path = yolo_raw_detector(workdir / f"{name}.onnx", boxes)
    with Session(plane.engine) as session:
        version = crud.next_model_version(session, name)
        model = crud.add_model_version(session, ModelVersion(
            name=name, version=version, dataset_id="synthetic-detection", code_version=code_version(),
            labels=DET_LABELS, hyperparameters={}, metrics={}, onnx_path=str(onnx_path),
            onnx_sha256=sha256_file(onnx_path)))
        assert model.id is not None
        built = build_package(
            packages_dir=plane.settings.packages_dir, model_name=name, model_version=version, labels=DET_LABELS,
            spec=DET_SPEC, hardware_profiles=profiles, detection=DETECTION, release=model.id,
            artifacts=[(onnx_path, ModelArtifact(file="model.onnx", runtime="onnxruntime", precision="fp32",
                                                     output_name="output0"))])
        crud.add_package(session, Package(
            id=built.manifest.package_id, model_version_id=model.id, model_version=version,
            hardware_profiles=profiles, manifest_sha256=built.manifest_sha256, size_bytes=built.size_bytes,
            path=str(built.directory.resolve())))
    plane.security.publish_package(plane.settings.packages_dir / built.manifest.package_id)
    return PipelineResult(model_version=version, package_id=built.manifest.package_id, accuracy=0.0)
