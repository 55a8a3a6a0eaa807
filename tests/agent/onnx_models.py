"""Small ONNX models with known behaviour for agent tests (built with onnx.helper, no torch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from agent.contract import PreprocessSpec

SPEC = PreprocessSpec(width=32, height=32, resize="stretch", color_order="rgb", scale=1 / 255,
                      mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
LABELS = ["circle", "square", "triangle", "cross"]
HIDDEN = 1024


def scored_model(path: Path, logits: list[float], *, work_layers: int = 12, nan_on_live_frames: bool = False) -> Path:
    """Outputs ``logits`` (constant) after ``work_layers`` 1024x1024 MatMuls of real work.

    ``work_layers`` sets the cost: 5x the layers is a model about 5x slower.
    ``nan_on_live_frames``: NaN whenever the input's maximum exceeds 0.5 - true for
    every synthetic camera frame (objects are brighter than 150/255) but not for the
    all-zero golden input, so the model passes its self-test and fails in the field.
    """
    nodes = [
        helper.make_node("Flatten", ["input"], ["flat"], axis=1),
        helper.make_node("Slice", ["flat", "starts", "ends", "axes"], ["h0"]),
    ]
    for i in range(work_layers):
        nodes.append(helper.make_node("MatMul", [f"h{i}", "weight"], [f"h{i + 1}"]))
    last = f"h{work_layers}"
    nodes += [
        helper.make_node("ReduceSum", [last], ["total"], keepdims=1),
        helper.make_node("Mul", ["total", "zero"], ["zeroed"]),
    ]
    head = "zeroed"
    if nan_on_live_frames:
        nodes += [
            helper.make_node("ReduceMax", ["input"], ["peak"], keepdims=0),
            helper.make_node("Sub", ["half", "peak"], ["margin"]),
            helper.make_node("Sqrt", ["margin"], ["root"]),  # NaN when peak > 0.5
            helper.make_node("Mul", ["root", "zero"], ["nan_or_zero"]),
            helper.make_node("Add", ["zeroed", "nan_or_zero"], ["head"]),
        ]
        head = "head"
    nodes.append(helper.make_node("Add", [head, "const"], ["logits"]))
    shape = list(SPEC.input_shape(1))
    graph = helper.make_graph(
        nodes, "scored",
        inputs=[helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", *shape[1:]])],
        outputs=[helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(logits)])],
        initializer=[
            helper.make_tensor("starts", TensorProto.INT64, [1], [0]),
            helper.make_tensor("ends", TensorProto.INT64, [1], [HIDDEN]),
            helper.make_tensor("axes", TensorProto.INT64, [1], [1]),
            numpy_helper.from_array(np.eye(HIDDEN, dtype=np.float32) * np.float32(0.5), "weight"),
            helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
            helper.make_tensor("half", TensorProto.FLOAT, [], [0.5]),
            helper.make_tensor("const", TensorProto.FLOAT, [1, len(logits)], logits),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def golden_for(model_path: Path, golden_path: Path, *, perturb: float = 0.0) -> Path:
    """Golden vectors: all-zero inputs and the model's own outputs (plus ``perturb``, to make a bad file)."""
    inputs = np.zeros((2, *SPEC.input_shape(1)[1:]), dtype=np.float32)
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    outputs = np.concatenate([session.run(None, {"input": inputs[i : i + 1]})[0] for i in range(len(inputs))])
    np.savez(golden_path, inputs=inputs, outputs=outputs + np.float32(perturb))
    return golden_path


def brightness_model(path: Path) -> Path:
    """Takes a batch: each row's logits are ``[m, 1 - m, 0, 0]`` for its input's mean ``m``.

    Bright frames say ``circle``, dark ones ``square``: a batch whose rows were split back to
    the wrong cameras shows in their labels.
    """
    shape = list(SPEC.input_shape(1))
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["input"], ["mean"], axes=[1, 2, 3], keepdims=0),
            helper.make_node("Unsqueeze", ["mean", "axis"], ["column"]),
            helper.make_node("Mul", ["column", "direction"], ["scaled"]),
            helper.make_node("Add", ["scaled", "offset"], ["logits"]),
        ],
        "brightness",
        inputs=[helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", *shape[1:]])],
        outputs=[helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(LABELS)])],
        initializer=[
            helper.make_tensor("axis", TensorProto.INT64, [1], [1]),
            helper.make_tensor("direction", TensorProto.FLOAT, [1, len(LABELS)], [1.0, -1.0, 0.0, 0.0]),
            helper.make_tensor("offset", TensorProto.FLOAT, [1, len(LABELS)], [0.0, 1.0, 0.0, 0.0]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path
