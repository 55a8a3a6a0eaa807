"""What an imported model is: task, output decoder and score activation (pure; no I/O).

Imported models arrive without EdgeFleet's manifest, so what the device needs to run
them is read from three places, in this order of authority:

1. what the user declared (``--task``, ``--decoder``, ``--activation``, ``--labels``,
   ``--input-size``);
2. the exporter's metadata (Ultralytics writes ``task``, ``names`` and ``imgsz`` into
   the ONNX ``metadata_props``);
3. the model itself: its output shape, the op that ends its graph, and the values it
   gives on reference images run through the device's own runtime.

A declaration that the model contradicts is an error, and so is a model the rules
cannot place: each error names the flag that settles it.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from cloud.pipeline.errors import PipelineInputError

Task = Literal["classification", "detection"]
Decoder = Literal["yolo_raw", "nms_in_graph", "yolov5"]
Activation = Literal["logits", "probabilities"]
DECODERS: tuple[Decoder, ...] = ("yolo_raw", "nms_in_graph", "yolov5")
TASKS: tuple[Task, ...] = ("classification", "detection")
ACTIVATIONS: tuple[Activation, ...] = ("logits", "probabilities")

# yolo_raw's N candidate columns outnumber its 4+C rows by far (8400 vs 84 for a COCO
# model at 640 px); a square-ish output is not recognisably either orientation.
_MIN_CANDIDATES_PER_ROW = 4
# How far a probability row's sum may stray from 1 (float32 softmax, INT8 outputs).
_SUM_TOLERANCE = 2e-2
_RANGE_TOLERANCE = 1e-4
# Metadata is untrusted text parsed as a literal: bounded so a crafted file cannot exhaust the parser.
_MAX_METADATA_CHARS = 200_000


class AmbiguousModel(PipelineInputError):
    """The model cannot be placed without a declaration; the message names the flag."""


@dataclass(frozen=True)
class ExporterMetadata:
    """What an exporter wrote into the model file (Ultralytics ONNX ``metadata_props``)."""

    task: Task | None = None
    labels: list[str] | None = None
    # (height, width): Ultralytics writes imgsz as [h, w].
    input_size: tuple[int, int] | None = None
    source: str = ""


@dataclass(frozen=True)
class Layout:
    """Where the output's class count sits, once task and decoder are known."""

    task: Task
    decoder: Decoder | None
    num_classes: int


def parse_ultralytics_metadata(props: Mapping[str, str]) -> ExporterMetadata:
    """Read ``task``, ``names`` and ``imgsz`` from Ultralytics' ONNX metadata (absent keys stay None).

    ``names`` is a Python dict literal (``"{0: 'person', 1: 'car'}"``) and ``imgsz`` a list
    literal (``"[640, 640]"``); both are read with :func:`ast.literal_eval`, never ``eval``.

    Raises:
        PipelineInputError: a key is present but malformed (say which, and which flag replaces it).
    """
    if not any(key in props for key in ("names", "imgsz", "task")):
        return ExporterMetadata()
    for key in ("names", "imgsz"):
        if len(props.get(key, "")) > _MAX_METADATA_CHARS:
            raise PipelineInputError(f"the model's metadata {key!r} is over {_MAX_METADATA_CHARS} characters; "
                                     f"pass {'--labels FILE' if key == 'names' else '--input-size'} instead")
    task: Task | None = None
    raw_task = props.get("task")
    if raw_task is not None:
        if raw_task == "detect":
            task = "detection"
        elif raw_task == "classify":
            task = "classification"
        else:
            raise PipelineInputError(f"the model's metadata says task {raw_task!r}; EdgeFleet imports 'detect' and "
                                     "'classify' models (or pass --task classification|detection if it is one)")
    labels: list[str] | None = None
    if "names" in props:
        try:
            names = ast.literal_eval(props["names"])
        except (ValueError, SyntaxError, TypeError, RecursionError, MemoryError) as exc:
            raise PipelineInputError(f"the model's metadata 'names' is not a dict or list literal ({exc}); "
                                     "pass --labels FILE instead") from exc
        if isinstance(names, dict) and all(isinstance(k, int) for k in names):
            if sorted(names) != list(range(len(names))):
                raise PipelineInputError(f"the model's metadata 'names' has class ids {sorted(names)}, not 0..N-1; "
                                         "pass --labels FILE instead")
            labels = [str(names[i]) for i in range(len(names))]
        elif isinstance(names, list):
            labels = [str(n) for n in names]
        else:
            raise PipelineInputError("the model's metadata 'names' is neither {id: name} nor a list; "
                                     "pass --labels FILE instead")
    size: tuple[int, int] | None = None
    if "imgsz" in props:
        try:
            imgsz = ast.literal_eval(props["imgsz"])
        except (ValueError, SyntaxError, TypeError, RecursionError, MemoryError) as exc:
            raise PipelineInputError(f"the model's metadata 'imgsz' is not a list literal ({exc}); "
                                     "pass --input-size instead") from exc
        if isinstance(imgsz, int):
            imgsz = [imgsz, imgsz]
        if (not isinstance(imgsz, list | tuple) or len(imgsz) != 2
                or not all(isinstance(v, int) and v > 0 for v in imgsz)):
            raise PipelineInputError(f"the model's metadata 'imgsz' is {props['imgsz']!r}, not [height, width]; "
                                     "pass --input-size instead")
        size = (int(imgsz[0]), int(imgsz[1]))
    return ExporterMetadata(task=task, labels=labels, input_size=size, source="ultralytics metadata")


def infer_layout(shape: tuple[int, ...], *, num_labels: int | None, task: Task | None,
                 decoder: Decoder | None) -> Layout:
    """Task, decoder and class count from the output ``shape`` and what was declared.

    Rules: ``1 x C`` is a classifier; ``1 x N x 6`` with N > 6 is ``nms_in_graph``;
    ``1 x (4+C) x N`` with N >= 4 x (4+C) is ``yolo_raw``; ``1 x N x (5+C)`` is
    ``yolov5`` only when declared or when the label count says so. A declared decoder
    must fit the shape.

    Raises:
        AmbiguousModel: the shape fits no layout, or more than one, naming the flag to pass.
        PipelineInputError: a declaration the shape contradicts.
    """
    dims = list(shape)
    if task == "classification" and decoder is not None:
        raise PipelineInputError("--decoder applies to detection models only; drop it or pass --task detection")
    if decoder is not None:
        task = "detection"
    if len(dims) == 2 and dims[0] == 1:
        if task == "detection":
            raise PipelineInputError(f"the model outputs {dims}, a classifier's 1 x C scores, not a detector's "
                                     "boxes; pass --task classification (or check you exported the right model)")
        _check_count(dims[1], num_labels, f"the classifier outputs {dims[1]} scores")
        return Layout("classification", None, dims[1])
    if len(dims) != 3 or dims[0] != 1:
        raise AmbiguousModel(f"unknown output layout {dims}: EdgeFleet runs classifiers (1 x C) and detectors "
                             "(1 x (4+C) x N yolo_raw, 1 x N x 6 nms_in_graph, 1 x N x (5+C) yolov5); "
                             "re-export the model to one of these (batch 1)")
    if task == "classification":
        raise PipelineInputError(f"--task classification, but the model outputs {dims}; a classifier outputs 1 x C")
    rows, columns = dims[1], dims[2]
    if decoder is None:
        decoder = _guess_decoder(rows, columns, num_labels)
    if decoder == "yolo_raw":
        if rows <= 4:
            raise PipelineInputError(f"--decoder yolo_raw expects 1 x (4+C) x N; the model outputs {dims}")
        _check_count(rows - 4, num_labels, f"yolo_raw output {dims} has {rows - 4} class rows")
        return Layout("detection", "yolo_raw", rows - 4)
    if decoder == "nms_in_graph":
        if columns != 6:
            raise PipelineInputError(f"--decoder nms_in_graph expects 1 x N x 6; the model outputs {dims}")
        if num_labels is None:
            raise AmbiguousModel(f"the model outputs {dims} (nms_in_graph: x1, y1, x2, y2, score, class): the class "
                                 "names are not in the model; pass --labels FILE")
        return Layout("detection", "nms_in_graph", num_labels)
    if columns <= 5:
        raise PipelineInputError(f"--decoder yolov5 expects 1 x N x (5+C); the model outputs {dims}")
    _check_count(columns - 5, num_labels, f"yolov5 output {dims} has {columns - 5} class columns")
    return Layout("detection", "yolov5", columns - 5)


def _guess_decoder(rows: int, columns: int, num_labels: int | None) -> Decoder:
    fits: list[Decoder] = []
    if rows > 4 and columns >= _MIN_CANDIDATES_PER_ROW * rows and (num_labels is None or rows == 4 + num_labels):
        fits.append("yolo_raw")
    if columns == 6 and rows > 6 and (num_labels is None or num_labels != 1):
        fits.append("nms_in_graph")
    # 1 x N x (5+C) looks like a transposed yolo_raw (N x (4+C)) too: only the label count tells them apart.
    if num_labels is not None and columns == 5 + num_labels and rows > columns:
        fits.append("yolov5")
    if len(fits) == 1:
        return fits[0]
    shape = f"[1, {rows}, {columns}]"
    if not fits:
        known = f" with {num_labels} labels" if num_labels is not None else ""
        raise AmbiguousModel(f"cannot tell the output layout of {shape}{known}: pass --decoder "
                             "yolo_raw (1 x (4+C) x N) | nms_in_graph (1 x N x 6) | yolov5 (1 x N x (5+C)), "
                             "and --labels FILE so the class count is known")
    raise AmbiguousModel(f"output {shape} fits decoders {fits}: pass --decoder {' or --decoder '.join(fits)}")


def _check_count(found: int, num_labels: int | None, what: str) -> None:
    if num_labels is not None and found != num_labels:
        raise PipelineInputError(f"{what} but the labels list {num_labels} classes; give --labels with exactly "
                                 f"{found} class names in the model's order")


def score_values(output: npt.NDArray[np.float32], layout: Layout) -> npt.NDArray[np.float32]:
    """The part of a raw output that holds class scores (what an activation applies to)."""
    batch = output[0] if output.ndim == 3 else output
    if layout.task == "classification":
        return np.asarray(output, dtype=np.float32).reshape(-1, layout.num_classes)
    if layout.decoder == "yolo_raw":
        return np.asarray(batch[4:], dtype=np.float32)
    if layout.decoder == "nms_in_graph":
        return np.asarray(batch[:, 4], dtype=np.float32)
    return np.asarray(batch[:, 4:], dtype=np.float32)


def observed_activation(outputs: list[npt.NDArray[np.float32]], layout: Layout) -> Activation | None:
    """What the reference outputs show: ``probabilities``, ``logits``, or None when they cannot tell.

    A classifier's rows in [0, 1] that sum to 1 are probabilities; any score outside
    [0, 1] is a logit. Rows in [0, 1] not summing to 1 (sigmoid outputs, or small logits)
    tell nothing. A detector's scores in [0, 1] on every reference image read as
    probabilities (sigmoid in the graph, as YOLOv8/YOLO11 exports do).
    """
    scores = [score_values(o, layout) for o in outputs]
    values = np.concatenate([s.ravel() for s in scores]) if scores else np.zeros(0, dtype=np.float32)
    if not values.size:
        return None
    in_unit = bool(values.min() >= -_RANGE_TOLERANCE and values.max() <= 1 + _RANGE_TOLERANCE)
    if not in_unit:
        return "logits"
    if layout.task == "detection":
        return "probabilities"
    sums = np.concatenate([s.sum(axis=-1) for s in scores])
    return "probabilities" if bool(np.all(np.abs(sums - 1.0) <= _SUM_TOLERANCE)) else None


def resolve_activation(declared: Activation | None, graph_says: Activation | None, observed: Activation | None,
                       layout: Layout) -> tuple[Activation, str]:
    """The activation to record and how it was decided.

    Raises:
        PipelineInputError: the declaration contradicts the reference outputs.
        AmbiguousModel: nothing declared and the outputs cannot tell.
    """
    if declared is not None:
        if declared == "probabilities" and observed == "logits":
            raise PipelineInputError("--activation probabilities, but the model's scores on the reference images "
                                     "fall outside [0, 1]: they are logits; pass --activation logits")
        if declared == "logits" and graph_says == "probabilities":
            raise PipelineInputError("--activation logits, but the graph ends in Softmax/Sigmoid: its outputs are "
                                     "probabilities already; pass --activation probabilities")
        return declared, "declared"
    if graph_says is not None:
        if observed == "logits":
            raise PipelineInputError("the graph ends in Softmax/Sigmoid but its scores on the reference images fall "
                                     "outside [0, 1]; pass --activation logits|probabilities to say which")
        return graph_says, "graph ends in Softmax/Sigmoid, checked on reference images"
    if observed is not None:
        return observed, f"reference images show {observed}"
    what = "classifier scores in [0, 1] that do not sum to 1"
    raise AmbiguousModel(f"the {layout.task} model's outputs on the reference images are {what}: cannot tell "
                         "logits from probabilities; pass --activation logits or --activation probabilities")
