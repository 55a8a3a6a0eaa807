"""Whether an ONNX classifier's output is already probabilities (its graph ends in Softmax)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import onnx

# Shape-only ops that may sit between a Softmax and the graph output.
_PASS_THROUGH = {"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Cast"}


def onnx_output_activation(model_path: Path) -> Literal["softmax", "none"]:
    """``"none"`` when the first output comes from a Softmax (the device must not apply it again), else ``"softmax"``."""
    graph = onnx.load(str(model_path), load_external_data=False).graph
    producers = {output: node for node in graph.node for output in node.output}
    name = graph.output[0].name
    while (node := producers.get(name)) is not None:
        if node.op_type == "Softmax":
            return "none"
        if node.op_type not in _PASS_THROUGH or not node.input:
            break
        name = node.input[0]
    return "softmax"
