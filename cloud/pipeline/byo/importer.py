"""Bring-your-own models: read an ONNX, LiteRT (``.tflite``) or OpenVINO IR file, decide what it is,
check it on reference images through the device's own runtime, and package it as it is.

The model file is not converted: what the device runs is the file the user gave
(an ONNX model with dynamic height/width gets those dimensions fixed to the declared
size, nothing else). The reference check runs the agent's backend, preprocessing,
activation and detection decoder, so what the import reports for the reference
images is what a device running the package computes for them.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from agent.contract import DetectionSpec, ModelArtifact, PreprocessSpec
from agent.errors import RuntimeLoadError
from agent.infer.detect import detect
from agent.infer.engine import softmax
from agent.preprocess import preprocess
from agent.runtime import InferenceBackend, load_backend
from cloud.pipeline.byo.layout import (
    ACTIVATIONS,
    DECODERS,
    TASKS,
    Activation,
    AmbiguousModel,
    Decoder,
    ExporterMetadata,
    Layout,
    Task,
    infer_layout,
    observed_activation,
    parse_ultralytics_metadata,
    resolve_activation,
)
from cloud.pipeline.errors import PipelineInputError

Runtime = Literal["onnxruntime", "openvino", "litert"]
Precision = Literal["fp32", "fp16", "int8"]
FORMATS: dict[str, Runtime] = {".onnx": "onnxruntime", ".tflite": "litert", ".xml": "openvino"}
# File names inside the package (and the model directory): the same scheme builds use.
PACKAGED_NAMES: dict[Runtime, str] = {"onnxruntime": "model-fp32.onnx", "litert": "model.tflite",
                                      "openvino": "model-ov.xml"}
REFERENCE_IMAGES = 4
# Ops that only reshape or rename between a score activation and the graph output.
_PASS_THROUGH = {"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Cast", "Convert", "Result"}
_SCORE_ACTIVATIONS = {"Softmax", "SoftMax", "Sigmoid", "LogSoftmax"}
_GOLDEN_RELATIVE_TOLERANCE: dict[str, float] = {"fp32": 1e-3, "fp16": 2e-2, "int8": 5e-2}
# Ultralytics letterboxes with grey 114 and scales pixels to [0, 1], RGB.
_YOLO_PAD_VALUE = 114


@dataclass(frozen=True)
class ImportDeclaration:
    """What the user said about the model; None = infer it."""

    labels: list[str] | None = None
    spec: PreprocessSpec | None = None
    task: Task | None = None
    decoder: Decoder | None = None
    activation: Activation | None = None
    # (width, height) of the model input.
    input_size: tuple[int, int] | None = None
    score_threshold: float | None = None
    iou_threshold: float | None = None
    max_detections: int | None = None

    @classmethod
    def checked(cls, *, task: str | None = None, decoder: str | None = None, activation: str | None = None,
                **rest: Any) -> ImportDeclaration:
        """A declaration from untyped input (CLI flags, form fields).

        Raises:
            PipelineInputError: an unknown task, decoder or activation (naming the valid ones).
        """
        for flag, value, allowed in (("--task", task, TASKS), ("--decoder", decoder, DECODERS),
                                     ("--activation", activation, ACTIVATIONS)):
            if value is not None and value not in allowed:
                raise PipelineInputError(f"{flag} {value!r} is not one of {' | '.join(allowed)}")
        return cls(task=task, decoder=decoder, activation=activation, **rest)  # type: ignore[arg-type]


def parse_input_size(text: str) -> tuple[int, int]:
    """``"640"`` or ``"640x480"`` (width x height) → (width, height).

    Raises:
        PipelineInputError: anything else, or a side outside 8..4096.
    """
    parts = text.lower().replace(" ", "").split("x")
    try:
        values = [int(part) for part in parts]
    except ValueError:
        values = []
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or not all(8 <= v <= 4096 for v in values):
        raise PipelineInputError(f"--input-size {text!r}: give WIDTHxHEIGHT (e.g. 640x640) or one number, 8..4096")
    return values[0], values[1]


@dataclass(frozen=True)
class ModelInput:
    """The model file's own view of its input: layout and static size (None where dynamic)."""

    layout: Literal["nchw", "nhwc"]
    width: int | None
    height: int | None


@dataclass
class InspectedModel:
    """An imported model staged in its model directory, with everything its manifest needs."""

    runtime: Runtime
    precision: Precision
    model_file: Path
    extra_files: list[Path]
    labels: list[str]
    spec: PreprocessSpec
    task: Task
    activation: Activation
    activation_reason: str
    detection: DetectionSpec | None
    metadata: ExporterMetadata
    notes: list[str] = field(default_factory=list)
    reference_inputs: npt.NDArray[np.float32] = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    reference_outputs: npt.NDArray[np.float32] = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    check: list[dict[str, Any]] = field(default_factory=list)

    @property
    def output_activation(self) -> Literal["softmax", "none"]:
        """The manifest's per-artifact field: the device applies softmax only to logits."""
        if self.task == "classification" and self.activation == "logits":
            return "softmax"
        return "none"

    def artifact(self) -> ModelArtifact:
        return ModelArtifact(file=self.model_file.name, runtime=self.runtime, precision=self.precision,
                             output_activation=self.output_activation)

    def summary(self) -> dict[str, Any]:
        return {"format": self.runtime, "precision": self.precision, "task": self.task,
                "decoder": self.detection.decoder if self.detection else None, "activation": self.activation,
                "activation_reason": self.activation_reason, "labels": self.labels,
                "input_size": [self.spec.width, self.spec.height], "metadata": self.metadata.source or None,
                "reference_check": self.check}


def model_runtime(model_path: Path) -> Runtime:
    """The runtime that reads ``model_path``, from its suffix.

    Raises:
        PipelineInputError: an unknown suffix, or an OpenVINO ``.xml`` without its ``.bin``.
    """
    runtime = FORMATS.get(model_path.suffix.lower())
    if runtime is None:
        raise PipelineInputError(f"{model_path.name}: import takes ONNX (.onnx), LiteRT (.tflite) or OpenVINO IR "
                                 "(.xml with its .bin beside it)")
    if runtime == "openvino" and not model_path.with_suffix(".bin").is_file():
        raise PipelineInputError(f"{model_path.name} is OpenVINO IR but {model_path.with_suffix('.bin').name} is not "
                                 "beside it; give the .xml with its .bin in the same directory")
    return runtime


def reference_images(count: int = REFERENCE_IMAGES, seed: int = 0) -> list[npt.NDArray[np.uint8]]:
    """Deterministic 320x240 BGR scenes (gradient, noise, filled shapes) for a model without a dataset.

    Not what the model was trained on, but they exercise the whole input range, which is
    what telling logits from probabilities and checking the decoder needs.
    """
    rng = np.random.default_rng(seed)
    images = []
    y, x = np.mgrid[0:240, 0:320]
    for index in range(count):
        base = np.stack([(x * 255 // 319), (y * 255 // 239), np.full_like(x, 40 * index)], axis=2)
        image = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
        for _ in range(3):
            x0, y0 = int(rng.integers(0, 240)), int(rng.integers(0, 160))
            w, h = int(rng.integers(30, 80)), int(rng.integers(30, 80))
            image[y0 : y0 + h, x0 : x0 + w] = rng.integers(0, 256, 3, dtype=np.uint8)
        images.append(image)
    return images


# --- reading each format ---------------------------------------------------------
def _layout_of(dims: Sequence[int | None], what: str) -> ModelInput:
    if len(dims) != 4:
        raise PipelineInputError(f"{what} has input rank {len(dims)}; EdgeFleet feeds one image tensor "
                                 "(1 x 3 x H x W or 1 x H x W x 3)")
    if dims[1] == 3:
        return ModelInput("nchw", width=dims[3], height=dims[2])
    if dims[3] == 3:
        return ModelInput("nhwc", width=dims[2], height=dims[1])
    raise PipelineInputError(f"{what} takes input {list(dims)}, not 3-channel NCHW or NHWC; EdgeFleet feeds images")


def _onnx_input(model: Any) -> tuple[Any, list[int | None]]:
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise PipelineInputError(f"the ONNX model has {len(inputs)} inputs ({[i.name for i in inputs]}); "
                                 "EdgeFleet feeds one image tensor")
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
            for d in inputs[0].type.tensor_type.shape.dim]
    return inputs[0], dims


def _graph_activation_onnx(model: Any) -> Activation | None:
    producers = {output: node for node in model.graph.node for output in node.output}
    name = model.graph.output[0].name
    while (node := producers.get(name)) is not None:
        if node.op_type in _SCORE_ACTIVATIONS and node.op_type != "LogSoftmax":
            return "probabilities"
        if node.op_type not in _PASS_THROUGH or not node.input:
            return None
        name = node.input[0]
    return None


def _read_onnx(source: Path) -> tuple[Any, ModelInput, ExporterMetadata, Activation | None]:
    import onnx

    try:
        model = onnx.load(str(source))
    except Exception as exc:  # onnx raises DecodeError and friends for a file that is not ONNX
        raise PipelineInputError(f"{source.name} is not a readable ONNX model: {exc}") from exc
    _, dims = _onnx_input(model)
    metadata = parse_ultralytics_metadata({p.key: p.value for p in model.metadata_props})
    return model, _layout_of(dims, source.name), metadata, _graph_activation_onnx(model)


def _stage_onnx(model: Any, size: tuple[int, int], model_input: ModelInput, target: Path) -> bool:
    """Write the ONNX model with its height/width fixed to ``size``; True when dims were rewritten."""
    import onnx

    graph_input, dims = _onnx_input(model)
    width, height = size
    wanted = {2: height, 3: width} if model_input.layout == "nchw" else {1: height, 2: width}
    rewritten = False
    for axis, value in wanted.items():
        if dims[axis] is None:
            graph_input.type.tensor_type.shape.dim[axis].ClearField("dim_param")
            graph_input.type.tensor_type.shape.dim[axis].dim_value = value
            rewritten = True
    target.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(target))
    return rewritten


def _read_tflite(source: Path) -> tuple[ModelInput, Precision]:
    from agent.runtime.litert import interpreter_class

    interpreter_type = interpreter_class()
    if interpreter_type is None:
        raise PipelineInputError("cannot import .tflite here: neither ai-edge-litert nor tflite-runtime is installed")
    try:
        interpreter = interpreter_type(model_path=str(source))
    except Exception as exc:  # the interpreter raises ValueError/RuntimeError of its own
        raise PipelineInputError(f"{source.name} is not a loadable LiteRT model: {exc}") from exc
    details = interpreter.get_input_details()
    if len(details) != 1:
        raise PipelineInputError(f"{source.name} has {len(details)} inputs; EdgeFleet feeds one image tensor")
    dims = [int(d) if d > 0 else None for d in details[0]["shape_signature"]]
    integer = any(np.issubdtype(d["dtype"], np.integer) for d in [*details, *interpreter.get_output_details()])
    return _layout_of(dims, source.name), "int8" if integer else "fp32"


def _read_ir(source: Path) -> tuple[Any, ModelInput, Precision, Activation | None]:
    try:
        import openvino as ov
    except ImportError as exc:
        raise PipelineInputError("cannot import OpenVINO IR here: openvino is not installed") from exc
    try:
        model = ov.Core().read_model(str(source))
    except Exception as exc:  # OpenVINO raises RuntimeError subclasses of its own
        raise PipelineInputError(f"{source.name} is not readable OpenVINO IR: {exc}") from exc
    if len(model.inputs) != 1:
        raise PipelineInputError(f"{source.name} has {len(model.inputs)} inputs; EdgeFleet feeds one image tensor")
    shape = model.inputs[0].get_partial_shape()
    dims = [int(d.get_length()) if d.is_static else None for d in shape]
    ops = {op.get_type_name() for op in model.get_ops()}
    precision: Precision = "int8" if "FakeQuantize" in ops else "fp32"
    node = model.get_results()[0].input_value(0).get_node()
    graph_says: Activation | None = None
    while True:
        kind = node.get_type_name()
        if kind in _SCORE_ACTIVATIONS and kind != "LogSoftmax":
            graph_says = "probabilities"
            break
        if kind not in _PASS_THROUGH or node.get_input_size() == 0:
            break
        node = node.input_value(0).get_node()
    return model, _layout_of(dims, source.name), precision, graph_says


def _stage_ir(model: Any, source: Path, size: tuple[int, int], model_input: ModelInput, target: Path) -> bool:
    import openvino as ov

    target.parent.mkdir(parents=True, exist_ok=True)
    if model_input.width is not None and model_input.height is not None:
        shutil.copyfile(source, target)
        shutil.copyfile(source.with_suffix(".bin"), target.with_suffix(".bin"))
        return False
    width, height = size
    shape = [1, 3, height, width] if model_input.layout == "nchw" else [1, height, width, 3]
    model.reshape({model.inputs[0].any_name: ov.PartialShape(shape)})
    ov.save_model(model, str(target), compress_to_fp16=False)
    return True


# --- deciding what the model is ---------------------------------------------------
def _input_size(declared: ImportDeclaration, metadata: ExporterMetadata, model_input: ModelInput,
                name: str) -> tuple[int, int]:
    """(width, height): declared (``--input-size`` or the spec) > exporter metadata > the model's static size."""
    static = (model_input.width, model_input.height) if model_input.width and model_input.height else None
    size = declared.input_size
    if size is None and declared.spec is not None:
        size = (declared.spec.width, declared.spec.height)
    if size is None and metadata.input_size is not None:
        size = (metadata.input_size[1], metadata.input_size[0])
    if size is None:
        size = static
    if size is None:
        raise AmbiguousModel(f"{name} has a dynamic input height/width and no size in its metadata: "
                             "pass --input-size WIDTHxHEIGHT (e.g. --input-size 640x640)")
    if static is not None and static != size:
        raise PipelineInputError(f"{name} has a fixed input of {static[0]}x{static[1]} (WxH) but "
                                 f"{size[0]}x{size[1]} was asked for; pass --input-size {static[0]}x{static[1]} "
                                 "or re-export the model with a dynamic size")
    return size


def default_spec(task: Task | None, size: tuple[int, int], layout: Literal["nchw", "nhwc"]) -> PreprocessSpec:
    """Ultralytics' preprocessing (RGB, pixels / 255, letterbox on 114 for detectors) at ``size``."""
    width, height = size
    if task == "detection":
        return PreprocessSpec(width=width, height=height, resize="letterbox", interpolation="linear",
                              color_order="rgb", layout=layout, pad_value=_YOLO_PAD_VALUE)
    return PreprocessSpec(width=width, height=height, resize="stretch", color_order="rgb", layout=layout)


def _load_device_backend(runtime: Runtime, path: Path) -> InferenceBackend:
    try:
        return load_backend(ModelArtifact(file=path.name, runtime=runtime, precision="fp32"), path, threads=1)
    except RuntimeLoadError as exc:
        raise PipelineInputError(f"the device runtime ({runtime}) cannot load the model: {exc}") from exc


def inspect_and_stage(source: Path, declared: ImportDeclaration, model_dir: Path,
                      images: list[npt.NDArray[np.uint8]] | None = None) -> InspectedModel:
    """Stage ``source`` in ``model_dir`` and decide task, decoder, activation, labels and size.

    ``images`` are the reference images (BGR); without them :func:`reference_images`.

    Raises:
        AmbiguousModel: something only a flag can settle (the message names the flag).
        PipelineInputError: unreadable model, or declarations the model contradicts.
    """
    if not source.is_file():
        raise PipelineInputError(f"model file {source} does not exist")
    runtime = model_runtime(source)
    notes: list[str] = []
    metadata = ExporterMetadata()
    graph_says: Activation | None = None
    precision: Precision = "fp32"
    target = model_dir / PACKAGED_NAMES[runtime]
    extra: list[Path] = []
    if runtime == "onnxruntime":
        onnx_model, model_input, metadata, graph_says = _read_onnx(source)
        size = _input_size(declared, metadata, model_input, source.name)
        if _stage_onnx(onnx_model, size, model_input, target):
            notes.append(f"the ONNX input's dynamic height/width were fixed to {size[1]}x{size[0]} (HxW)")
    elif runtime == "litert":
        model_input, precision = _read_tflite(source)
        size = _input_size(declared, metadata, model_input, source.name)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    else:
        ir_model, model_input, precision, graph_says = _read_ir(source)
        size = _input_size(declared, metadata, model_input, source.name)
        if _stage_ir(ir_model, source, size, model_input, target):
            notes.append(f"the OpenVINO input's dynamic height/width were fixed to {size[1]}x{size[0]} (HxW)")
        extra.append(target.with_suffix(".bin"))
    if metadata.source:
        notes.append(f"read {metadata.source}: " + ", ".join(
            part for part, present in (("task", metadata.task), ("names", metadata.labels),
                                       ("imgsz", metadata.input_size)) if present))
    if declared.task is not None and metadata.task is not None and declared.task != metadata.task:
        raise PipelineInputError(f"--task {declared.task} but the model's metadata says {metadata.task}; "
                                 "drop --task or check the file")
    labels = declared.labels if declared.labels is not None else metadata.labels
    task_hint = declared.task or metadata.task or ("detection" if declared.decoder else None)

    spec = declared.spec
    if spec is not None and spec.layout != model_input.layout:
        raise PipelineInputError(f"the preprocessing spec says layout {spec.layout} but the model takes "
                                 f"{model_input.layout.upper()} input; fix 'layout' in the spec")
    backend = _load_device_backend(runtime, target)
    references = images if images else reference_images()
    provisional = spec or default_spec(task_hint, size, model_input.layout)
    tensors = [preprocess(image, provisional) for image in references]
    try:
        outputs = [backend.run(tensor) for tensor in tensors]
    except Exception as exc:  # each runtime raises its own shape errors on run
        raise PipelineInputError(f"the device runtime ({runtime}) cannot run the model on a "
                                 f"{list(provisional.input_shape(1))} input: {exc}") from exc
    if not all(np.all(np.isfinite(o)) for o in outputs):
        raise PipelineInputError("the model outputs NaN or Inf on the reference images; it cannot be deployed")
    layout = infer_layout(tuple(outputs[0].shape), num_labels=len(labels) if labels is not None else None,
                          task=task_hint, decoder=declared.decoder)
    if labels is None:
        raise AmbiguousModel(f"the {layout.task} model has {layout.num_classes} classes but their names are "
                             "neither declared nor in its metadata; pass --labels FILE (one name per line)")
    if len(labels) < 2 or len(set(labels)) != len(labels):
        raise PipelineInputError("a package needs at least two distinct labels; check --labels (or the metadata)")
    if spec is None:
        spec = default_spec(layout.task, size, model_input.layout)
        if spec != provisional:
            tensors = [preprocess(image, spec) for image in references]
            outputs = [backend.run(tensor) for tensor in tensors]
        notes.append(f"preprocessing assumed: {spec.resize}, {spec.color_order.upper()}, pixels x {spec.scale:.6g}, "
                     "no mean/std; pass --spec FILE if the model was trained otherwise")
    activation, reason = resolve_activation(declared.activation, graph_says, observed_activation(outputs, layout),
                                            layout)
    detection = _detection_spec(layout, spec, activation, declared)
    inspected = InspectedModel(
        runtime=runtime, precision=precision, model_file=target, extra_files=extra, labels=list(labels), spec=spec,
        task=layout.task, activation=activation, activation_reason=reason, detection=detection, metadata=metadata,
        notes=notes, reference_inputs=np.concatenate(tensors).astype(np.float32),
        reference_outputs=np.concatenate(outputs).astype(np.float32))
    inspected.check = device_view(inspected, outputs, references)
    return inspected


def _detection_spec(layout: Layout, spec: PreprocessSpec, activation: Activation,
                    declared: ImportDeclaration) -> DetectionSpec | None:
    if layout.task != "detection":
        return None
    assert layout.decoder is not None
    chosen: dict[str, Any] = {"decoder": layout.decoder, "input_width": spec.width, "input_height": spec.height,
                              "scores": activation}
    for key in ("score_threshold", "iou_threshold", "max_detections"):
        value = getattr(declared, key)
        if value is not None:
            chosen[key] = value
    try:
        return DetectionSpec(**chosen)
    except ValueError as exc:
        raise PipelineInputError(f"invalid detection settings: {exc}") from exc


def device_view(inspected: InspectedModel, outputs: list[npt.NDArray[np.float32]],
                images: list[npt.NDArray[np.uint8]]) -> list[dict[str, Any]]:
    """What a device running the package reports for each reference image: the agent's own decoding.

    Classifiers: top label and confidence after the manifest's activation. Detectors:
    the boxes of :func:`agent.infer.detect.detect` in source-image pixels.

    Raises:
        PipelineInputError: the decoder rejects the output (e.g. class ids outside the labels).
    """
    results: list[dict[str, Any]] = []
    for output, image in zip(outputs, images, strict=True):
        if inspected.detection is not None:
            height, width = image.shape[:2]
            try:
                found = detect(output, detection=inspected.detection, labels=inspected.labels,
                               preprocessing=inspected.spec, source_width=width, source_height=height)
            except ValueError as exc:
                raise PipelineInputError(f"the {inspected.detection.decoder} decoder rejects the model's output: "
                                         f"{exc}; pass the right --decoder and --labels") from exc
            results.append({"detections": [{"box": [d.x1, d.y1, d.x2, d.y2], "label": d.label, "score": d.score}
                                           for d in found]})
            continue
        scores = output[0]
        probabilities = softmax(scores) if inspected.output_activation == "softmax" else scores
        index = int(np.argmax(probabilities))
        results.append({"label": inspected.labels[index], "confidence": round(float(probabilities[index]), 5)})
    return results


def write_golden(inspected: InspectedModel, destination: Path) -> tuple[Path, float]:
    """The reference inputs and raw outputs as the package's self-test vectors, and their tolerance."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    np.savez(destination, inputs=inspected.reference_inputs, outputs=inspected.reference_outputs)
    outputs = inspected.reference_outputs
    scale = max(1.0, float(np.abs(outputs).max())) if outputs.size else 1.0
    return destination, round(_GOLDEN_RELATIVE_TOLERANCE[inspected.precision] * scale, 6)


def run_on_images(inspected: InspectedModel, images: list[npt.NDArray[np.uint8]]) -> npt.NDArray[np.float32]:
    """Raw outputs (N, ...) of the staged model on BGR images, one at a time through the device backend."""
    backend = _load_device_backend(inspected.runtime, inspected.model_file)
    outputs = [backend.run(preprocess(image, inspected.spec)) for image in images]
    return np.concatenate(outputs).astype(np.float32) if outputs else np.zeros((0, len(inspected.labels)),
                                                                                dtype=np.float32)
