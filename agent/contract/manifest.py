"""The package manifest: what a model package contains and how to run it.

A package is a directory with ``manifest.json`` and the files it lists. The
manifest pins every file by sha256 and size; the deploy command pins the manifest
itself by sha256, so one hash from a trusted channel covers the whole package.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agent.contract.preprocess import PreprocessSpec

MANIFEST_FILE = "manifest.json"
MANIFEST_SCHEMA_VERSION: Literal[1] = 1

# File names inside a package are flat: no directories, no traversal.
FileName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]

Runtime = Literal["onnxruntime", "openvino", "litert"]
Precision = Literal["fp32", "fp16", "int8"]

# What the model does with a frame. Checked against the raw manifest before parsing
# (see :func:`unsupported_feature`) so an agent that predates a task or decoder
# refuses the package with a code that says so instead of a generic parse error.
Task = Literal["classification", "detection"]
KNOWN_TASKS: tuple[str, ...] = ("classification", "detection")
# Output layouts the agent decodes (``agent.infer.detect``):
#   yolo_raw      1 x (4+C) x N: cx, cy, w, h in input pixels, then C class scores (YOLOv8/YOLO11 raw export)
#   nms_in_graph  1 x N x 6: x1, y1, x2, y2, score, class in input pixels (NMS done by the graph)
#   yolov5        1 x N x (5+C): cx, cy, w, h, objectness, then C class scores
Decoder = Literal["yolo_raw", "nms_in_graph", "yolov5"]
KNOWN_DECODERS: tuple[str, ...] = ("yolo_raw", "nms_in_graph", "yolov5")


class PackageFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: FileName
    sha256: Sha256
    size_bytes: int = Field(ge=0)


class ModelArtifact(BaseModel):
    """One runnable form of the model (a runtime and precision) inside the package."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    file: FileName
    runtime: Runtime
    precision: Precision
    input_name: str = "input"
    output_name: str = "logits"
    # "softmax": outputs are logits and the agent applies softmax; "none": already probabilities.
    output_activation: Literal["softmax", "none"] = "softmax"
    # Golden vectors for the on-device self-test: an .npz file in the package with
    # arrays "inputs" (preprocessed batch) and "outputs" (reference scores), and the
    # largest absolute difference in scores the device accepts.
    golden_file: FileName | None = None
    golden_tolerance: float = Field(default=1e-3, ge=0)
    # Hardware profiles this artifact is meant for; empty = every profile of the package.
    profiles: list[str] = Field(default_factory=list)


class DetectionSpec(BaseModel):
    """How a detection package's raw output becomes boxes (required when ``task`` is detection)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    decoder: Decoder
    # The square (or not) model input the output coordinates refer to; must equal the
    # preprocessing spec's width and height.
    input_width: int = Field(ge=8, le=4096)
    input_height: int = Field(ge=8, le=4096)
    score_threshold: float = Field(default=0.25, ge=0, le=1)
    iou_threshold: float = Field(default=0.45, gt=0, le=1)
    max_detections: int = Field(default=100, ge=1, le=1000)
    # "logits": the agent applies a sigmoid to class scores (and objectness);
    # "probabilities": the graph already did (YOLOv8/YOLO11 exports do).
    scores: Literal["logits", "probabilities"] = "probabilities"


class PackageManifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = MANIFEST_SCHEMA_VERSION
    package_id: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
    model_name: Annotated[str, Field(min_length=1, max_length=128)]
    model_version: Annotated[str, Field(min_length=1, max_length=128)]
    created_at: datetime
    hardware_profiles: list[str] = Field(min_length=1)
    labels: list[str] = Field(min_length=2, max_length=1000)
    preprocessing: PreprocessSpec
    artifacts: list[ModelArtifact] = Field(min_length=1)
    files: list[PackageFile] = Field(min_length=1)
    # Optional: the drift reference (histogram edges from the training
    # reference's quantiles, the logit projection, calibrated test constants), a file
    # listed in ``files`` so the manifest's hash covers it too.
    drift_reference_file: FileName | None = None
    # Optional: classification (the default: every manifest written before detection
    # existed) or detection, which then needs the ``detection`` block.
    task: Task = "classification"
    detection: DetectionSpec | None = None
    # Optional: this build's place in its model line (``model_name``), assigned by the
    # control plane and increasing with every new model version. A device refuses a lower
    # release than it installed unless the command is a signed rollback. 0 (manifests
    # written before releases existed) is never refused, nor does it raise the floor.
    release: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _task_matches_its_block(self) -> PackageManifest:
        if self.task == "detection":
            if self.detection is None:
                raise ValueError("a detection package needs a 'detection' block (decoder, input size, thresholds)")
            spec = self.preprocessing
            if (self.detection.input_width, self.detection.input_height) != (spec.width, spec.height):
                raise ValueError(f"detection input {self.detection.input_width}x{self.detection.input_height} "
                                 f"differs from the preprocessing size {spec.width}x{spec.height}")
        elif self.detection is not None:
            raise ValueError(f"a {self.task} package must not have a 'detection' block")
        return self

    @model_validator(mode="after")
    def _artifacts_are_listed(self) -> PackageManifest:
        names = {f.name for f in self.files}
        if len(names) != len(self.files):
            raise ValueError("files lists a name twice")
        for artifact in self.artifacts:
            if artifact.file not in names:
                raise ValueError(f"artifact file {artifact.file!r} is not listed in files")
            if artifact.golden_file is not None and artifact.golden_file not in names:
                raise ValueError(f"golden file {artifact.golden_file!r} is not listed in files")
        if self.drift_reference_file is not None and self.drift_reference_file not in names:
            raise ValueError(f"drift reference {self.drift_reference_file!r} is not listed in files")
        return self

    def file(self, name: str) -> PackageFile:
        for entry in self.files:
            if entry.name == name:
                return entry
        raise KeyError(name)

    def to_bytes(self) -> bytes:
        # Sorted keys and fixed separators: the manifest's sha256 is what commands pin.
        document = self.model_dump(mode="json")
        # Fields added after the first agents shipped are left out at their defaults, so a
        # classification manifest stays byte-identical and older agents still accept it.
        if document["task"] == "classification":
            del document["task"]
        if document["detection"] is None:
            del document["detection"]
        if document["release"] == 0:
            del document["release"]
        if document["preprocessing"].get("pad_value") == 0:
            del document["preprocessing"]["pad_value"]
        return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> PackageManifest:
        """Parse a manifest. Raises ``ValueError`` with what is wrong."""
        try:
            return cls.model_validate_json(raw)
        except ValidationError as exc:
            raise ValueError(f"invalid package manifest: {exc.errors()[0]['msg']}") from exc


def unsupported_feature(raw: bytes) -> tuple[str, str] | None:
    """``(code, message)`` when the raw manifest asks for a task or decoder this agent lacks, else None.

    Runs before :meth:`PackageManifest.from_bytes` so the refusal names what is
    missing (``unsupported_task``, ``unsupported_decoder``) rather than a parse error.
    Malformed JSON returns None: parsing reports that.
    """
    try:
        document = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(document, dict):
        return None
    task = document.get("task", "classification")
    if task not in KNOWN_TASKS:
        return ("unsupported_task", f"this agent runs tasks {list(KNOWN_TASKS)}; the package's task is {task!r}")
    detection = document.get("detection")
    if isinstance(detection, dict):
        decoder = detection.get("decoder")
        if decoder not in KNOWN_DECODERS:
            return ("unsupported_decoder",
                    f"this agent decodes {list(KNOWN_DECODERS)}; the package's decoder is {decoder!r}")
    return None


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def describe_file(path: Path) -> PackageFile:
    return PackageFile(name=path.name, sha256=sha256_file(path), size_bytes=path.stat().st_size)
