"""Small real models for tests: trained on synthetic scenes, or deliberately broken."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from cloud.pipeline.data.dataset import scan_imagefolder
from cloud.pipeline.data.synth import write_synthetic_dataset
from cloud.pipeline.train.trainer import DEFAULT_SPEC, TrainConfig, export_onnx, train


@dataclass(frozen=True)
class TrainedModel:
    onnx_path: Path
    labels: list[str]
    dataset_id: str
    accuracy: float


def train_tiny_model(workdir: Path, *, seed: int = 0) -> TrainedModel:
    data = write_synthetic_dataset(workdir / "data", images_per_class=150, seed=seed)
    dataset = scan_imagefolder(data)
    result = train(dataset, TrainConfig(epochs=6, seed=seed), DEFAULT_SPEC, show_progress=False)
    path = export_onnx(result.model, DEFAULT_SPEC, workdir / "model.onnx")
    return TrainedModel(path, dataset.labels, dataset.dataset_id, float(result.metrics["accuracy"]))


def constant_model(path: Path, num_classes: int, value: float, *, spec=DEFAULT_SPEC) -> Path:
    """An ONNX model whose every output is ``value`` (use ``float('nan')`` for a NaN model)."""
    shape = list(spec.input_shape(1))
    graph = helper.make_graph(
        nodes=[
            # Depends on the input (so runtimes cannot fold it away) but always yields zeros;
            # reduce every axis but the batch so the output keeps one row per input.
            helper.make_node("ReduceMean", ["input"], ["pooled"], axes=list(range(1, len(shape))), keepdims=0),
            helper.make_node("Mul", ["pooled", "zero"], ["zeroed"]),
            helper.make_node("Unsqueeze", ["zeroed", "axes"], ["column"]),
            helper.make_node("Add", ["column", "const"], ["logits"]),
        ],
        name="constant",
        inputs=[helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", *shape[1:]])],
        outputs=[helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", num_classes])],
        initializer=[
            helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
            helper.make_tensor("axes", TensorProto.INT64, [1], [1]),
            helper.make_tensor("const", TensorProto.FLOAT, [1, num_classes],
                               np.full(num_classes, value, dtype=np.float32).tolist()),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@dataclass(frozen=True)
class TrainedDetector:
    """A grid detector trained on synthetic scenes, exported to ONNX (yolo_raw)."""

    data_root: Path
    onnx_path: Path
    model: Any  # the trained GridDetector (LiteRT converts from PyTorch)
    dataset: Any  # the scanned DetectionDataset
    spec: Any  # its PreprocessSpec (letterbox)

    @property
    def output_name(self) -> str:
        """The ONNX graph's output, which a package's artifact entry names."""
        return str(onnx.load(str(self.onnx_path)).graph.output[0].name)


def train_scene_detector(data_dir: Path, model_dir: Path) -> TrainedDetector:
    """The detection tests' fast configuration, ~25 s on one core: 360 scenes, width 16, 12 epochs
    (mAP@0.5 ~0.8 on its test split)."""
    from cloud.pipeline.data.detection import scan_detection_dataset
    from cloud.pipeline.data.synth_detection import write_detection_dataset
    from cloud.pipeline.train.detector import (
        DETECTION_SPEC,
        DetectorConfig,
        export_detector_onnx,
        train_detector,
    )

    root = write_detection_dataset(data_dir / "data", images=360, seed=5)
    dataset = scan_detection_dataset(root)
    result = train_detector(dataset, DetectorConfig(epochs=12, width=16, seed=0), DETECTION_SPEC)
    onnx_path = export_detector_onnx(result.model, DETECTION_SPEC, model_dir / "det.onnx")
    return TrainedDetector(root, onnx_path, result.model, dataset, DETECTION_SPEC)
