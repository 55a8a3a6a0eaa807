"""Builds mark a classifier that ends in Softmax as already giving probabilities."""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

from cloud.pipeline.optimize.activation import onnx_output_activation


def _model(path: Path, ops: list[str]) -> Path:
    nodes, name = [], "input"
    for index, op in enumerate(ops):
        output = "output" if index == len(ops) - 1 else f"t{index}"
        nodes.append(helper.make_node(op, [name], [output], **({"axis": 1} if op in {"Softmax", "Flatten"} else {})))
        name = output
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_softmax_at_the_end_means_probabilities(tmp_path: Path) -> None:
    assert onnx_output_activation(_model(tmp_path / "a.onnx", ["Relu", "Softmax"])) == "none"
    assert onnx_output_activation(_model(tmp_path / "b.onnx", ["Softmax", "Identity", "Flatten"])) == "none"


def test_logits_at_the_end_get_softmax_on_the_device(tmp_path: Path) -> None:
    assert onnx_output_activation(_model(tmp_path / "c.onnx", ["Softmax", "Relu"])) == "softmax"
    assert onnx_output_activation(_model(tmp_path / "d.onnx", ["Relu"])) == "softmax"
