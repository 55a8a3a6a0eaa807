"""Deciding what an imported model is from metadata, output shape and reference outputs (pure rules)."""

from __future__ import annotations

import numpy as np
import pytest

from cloud.pipeline.byo.importer import ImportDeclaration, parse_input_size
from cloud.pipeline.byo.layout import (
    AmbiguousModel,
    Layout,
    infer_layout,
    observed_activation,
    parse_ultralytics_metadata,
    resolve_activation,
)
from cloud.pipeline.errors import PipelineInputError


def test_ultralytics_metadata_gives_task_labels_and_size() -> None:
    meta = parse_ultralytics_metadata({"task": "detect", "names": "{0: 'person', 1: 'car', 2: 'dog'}",
                                       "imgsz": "[480, 640]", "stride": "32"})
    assert (meta.task, meta.labels, meta.input_size) == ("detection", ["person", "car", "dog"], (480, 640))
    assert parse_ultralytics_metadata({"task": "classify", "names": "['a', 'b']"}).task == "classification"
    assert parse_ultralytics_metadata({"producer": "pytorch"}).source == ""
    with pytest.raises(PipelineInputError, match="--labels"):
        parse_ultralytics_metadata({"names": "{0: 'a', 2: 'b'}"})
    with pytest.raises(PipelineInputError, match="--labels"):
        parse_ultralytics_metadata({"names": "__import__('os').system('true')"})
    with pytest.raises(PipelineInputError, match="--labels"):
        parse_ultralytics_metadata({"names": "[" * 50_000 + "]" * 50_000})
    with pytest.raises(PipelineInputError, match="--input-size"):
        parse_ultralytics_metadata({"imgsz": "[640]"})
    with pytest.raises(PipelineInputError, match="--task"):
        parse_ultralytics_metadata({"task": "segment"})


@pytest.mark.parametrize(("shape", "labels", "expected"), [
    ((1, 5), None, Layout("classification", None, 5)),
    ((1, 84, 8400), None, Layout("detection", "yolo_raw", 80)),
    ((1, 6, 400), 2, Layout("detection", "yolo_raw", 2)),
    ((1, 100, 6), 3, Layout("detection", "nms_in_graph", 3)),
    ((1, 25200, 85), 80, Layout("detection", "yolov5", 80)),
])
def test_output_shapes_place_the_model(shape: tuple[int, ...], labels: int | None, expected: Layout) -> None:
    assert infer_layout(shape, num_labels=labels, task=None, decoder=None) == expected


def test_ambiguous_shapes_and_contradictions_name_the_flag() -> None:
    # N x (4+C) (a transposed raw export) or N x (5+C): without labels nothing tells them apart.
    with pytest.raises(AmbiguousModel, match="--decoder"):
        infer_layout((1, 8400, 85), num_labels=None, task=None, decoder=None)
    assert infer_layout((1, 8400, 85), num_labels=None, task=None, decoder="yolov5").num_classes == 80
    with pytest.raises(AmbiguousModel, match="re-export"):
        infer_layout((1, 3, 20, 20), num_labels=None, task=None, decoder=None)
    with pytest.raises(PipelineInputError, match="--task classification"):
        infer_layout((1, 5), num_labels=None, task="detection", decoder=None)
    with pytest.raises(PipelineInputError, match="exactly 80"):
        infer_layout((1, 84, 8400), num_labels=2, task=None, decoder="yolo_raw")
    with pytest.raises(PipelineInputError, match="1 x N x 6"):
        infer_layout((1, 84, 8400), num_labels=None, task=None, decoder="nms_in_graph")


def test_reference_outputs_tell_probabilities_from_logits() -> None:
    classifier = Layout("classification", None, 3)
    probabilities = [np.asarray([[0.2, 0.3, 0.5]], dtype=np.float32)]
    logits = [np.asarray([[2.0, -1.0, 0.5]], dtype=np.float32)]
    sigmoid_like = [np.asarray([[0.9, 0.8, 0.1]], dtype=np.float32)]
    assert observed_activation(probabilities, classifier) == "probabilities"
    assert observed_activation(logits, classifier) == "logits"
    assert observed_activation(sigmoid_like, classifier) is None
    with pytest.raises(AmbiguousModel, match="--activation logits or --activation probabilities"):
        resolve_activation(None, None, None, classifier)
    with pytest.raises(PipelineInputError, match="--activation logits"):
        resolve_activation("probabilities", None, "logits", classifier)
    assert resolve_activation("probabilities", None, None, classifier)[0] == "probabilities"
    detector = Layout("detection", "yolo_raw", 2)
    raw = np.concatenate([np.full((1, 4, 10), 50.0), np.full((1, 2, 10), 0.7)], axis=1).astype(np.float32)
    assert observed_activation([raw], detector) == "probabilities"  # box rows are pixels, not scores
    raw[0, 4, 0] = -3.0
    assert observed_activation([raw], detector) == "logits"


def test_flag_values_are_checked() -> None:
    assert parse_input_size("640") == (640, 640) and parse_input_size("640x480") == (640, 480)
    with pytest.raises(PipelineInputError, match="WIDTHxHEIGHT"):
        parse_input_size("big")
    with pytest.raises(PipelineInputError, match=r"'ssd' is not one of yolo_raw \| nms_in_graph \| yolov5"):
        ImportDeclaration.checked(decoder="ssd")
    with pytest.raises(PipelineInputError, match="--activation"):
        ImportDeclaration.checked(activation="softmax")
