"""Per-profile builds of a detector: every artifact a profile can use, evaluated and gated on mAP.

The same targets as :mod:`cloud.pipeline.optimize.build` (ONNX FP32; ONNX INT8 QDQ with
the profile's settings; OpenVINO IR FP32/FP16 and INT8 through NNCF for profiles that
list OpenVINO; LiteRT FP32/INT8 for profiles that list LiteRT when a converter is
available), with two differences a detector needs:

* INT8 covers the network only. The decode stage (sigmoid distances → centre/size in
  input pixels, class sigmoids, and their concatenation into one ``1 x (4+C) x N``
  tensor) stays float in every runtime: coordinates up to the input size and scores
  in 0..1 in one tensor share no int8 scale (one step would be ~0.6 px *and* 0.6 in
  score), and it is a handful of element-wise ops, so float costs nothing.
* Each artifact is evaluated by the device's own backend and the agent's decoder
  (decode, NMS, mapping to the source frame) and gated on mAP@0.5
  (:mod:`cloud.pipeline.evaluate.detection_gates`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from torch import nn

from agent.contract import DetectionSpec, ModelArtifact, PreprocessSpec
from agent.infer.detect import Detection, detect
from agent.profiles import FirmwareProfile
from cloud.pipeline.data.detection import DetectionTensors
from cloud.pipeline.errors import BuildToolError
from cloud.pipeline.evaluate.detection_gates import (
    DetectionEvaluation,
    DetectionQuantizationGateConfig,
    detection_quantization_gate,
    evaluate_raw_outputs,
)
from cloud.pipeline.evaluate.gates import GateDecision
from cloud.pipeline.optimize.build import PackagedArtifact
from cloud.pipeline.optimize.litert import NOT_INSTALLED, convert_tflite, litert_available
from cloud.pipeline.optimize.openvino_ir import convert_ir, nncf_available, quantize_ir_nncf
from cloud.pipeline.optimize.quantize import QuantizationSettings, quantize_onnx_static
from cloud.pipeline.optimize.runners import ArtifactRunner, device_backend_runner
from cloud.pipeline.train.detector import DECODE_SCOPE

# As in build.py: the device's self-test tolerance relative to the largest output (here
# the input size, since outputs carry box coordinates in input pixels).
_GOLDEN_RELATIVE_TOLERANCE = {"fp32": 1e-3, "fp16": 2e-2, "int8": 5e-2}
INPUT_NAME, OUTPUT_NAME = "input", "output0"
# The litert-torch submodule that is quantized (the rest, ``decode``, stays float).
_QUANTIZED_MODULE = "body"


@dataclass
class DetectionArtifact(PackagedArtifact):
    """A detector's artifact."""

    evaluation: DetectionEvaluation | None = None

    def quality(self) -> dict[str, Any]:
        return {
            "map_50": self.evaluation.map_50 if self.evaluation else None,
            "map_50_95": self.evaluation.map_50_95 if self.evaluation else None,
            "slices": ({k: v.metrics.map_50 for k, v in self.evaluation.slices.items()} if self.evaluation else {}),
        }


@dataclass
class DetectionBuildOutcome:
    artifacts: list[DetectionArtifact]
    notes: list[dict[str, Any]]
    fp32_evaluation: DetectionEvaluation | None

    @property
    def accepted(self) -> list[DetectionArtifact]:
        return [a for a in self.artifacts if a.accepted]


@dataclass(frozen=True)
class DetectionBuildRequest:
    fp32_onnx: Path
    spec: PreprocessSpec
    labels: list[str]
    block: DetectionSpec
    profiles: list[FirmwareProfile]
    work_dir: Path
    calibration: npt.NDArray[np.float32] | None
    evaluation: DetectionTensors | None
    golden_inputs: npt.NDArray[np.float32]
    torch_model: nn.Module | None = None
    quantization_overrides: dict[str, Any] = field(default_factory=dict)
    gate: DetectionQuantizationGateConfig = field(default_factory=DetectionQuantizationGateConfig)
    use_nncf: bool = True
    threads: int = 1


def _note(profile: str, target: str, status: str, message: str) -> dict[str, Any]:
    return {"profile": profile, "target": target, "status": status, "message": message}


def _artifact(file: str, runtime: str, precision: str) -> ModelArtifact:
    return ModelArtifact(file=file, runtime=runtime, precision=precision, input_name=INPUT_NAME,  # type: ignore[arg-type]
                         output_name=OUTPUT_NAME, output_activation="none")


def run_each(runner: ArtifactRunner, x: npt.NDArray[np.float32]) -> list[npt.NDArray[np.float32]]:
    """Batch 1, one image at a time: the raw output of every image, as a device runs them."""
    return [runner(x[i : i + 1]) for i in range(len(x))]


def golden_detections(outputs: list[npt.NDArray[np.float32]], block: DetectionSpec, labels: list[str],
                      spec: PreprocessSpec) -> list[list[Detection]]:
    """Boxes from golden outputs (inputs already at model size, so source = input pixels)."""
    return [detect(output, detection=block, labels=labels, preprocessing=spec, source_width=spec.width,
                   source_height=spec.height) for output in outputs]


def _write_golden(built: DetectionArtifact, golden_inputs: npt.NDArray[np.float32],
                  threads: int) -> list[npt.NDArray[np.float32]]:
    outputs = run_each(device_backend_runner(built.artifact.runtime, built.path, threads), golden_inputs)
    stacked = np.concatenate(outputs) if outputs else np.zeros((0,), dtype=np.float32)
    golden_path = built.path.with_name(f"golden-{built.path.stem}.npz")
    np.savez(golden_path, inputs=golden_inputs, outputs=stacked)
    scale = max(1.0, float(np.abs(stacked).max())) if stacked.size else 1.0
    tolerance = round(_GOLDEN_RELATIVE_TOLERANCE[built.artifact.precision] * scale, 6)
    built.artifact = built.artifact.model_copy(update={"golden_file": golden_path.name, "golden_tolerance": tolerance})
    built.extra_files.append(golden_path)
    return outputs


def evaluate_artifact(runtime: str, path: Path, data: DetectionTensors, *, block: DetectionSpec, labels: list[str],
                      spec: PreprocessSpec, threads: int = 1) -> DetectionEvaluation:
    """Run ``path`` through the agent's backend for ``runtime`` and its decoder; score on ``data``.

    Raises:
        BuildToolError: the backend cannot load the artifact.
    """
    outputs = run_each(device_backend_runner(runtime, path, threads), data.x)
    return evaluate_raw_outputs(outputs, data, block=block, labels=labels, spec=spec)


def build_detection_for_profiles(request: DetectionBuildRequest,
                                 log: Callable[[str], None] = lambda _: None) -> DetectionBuildOutcome:
    """Build, evaluate and gate every artifact ``request.profiles`` can use.

    Raises:
        BuildToolError: the FP32 model itself cannot be run.
    """
    work = request.work_dir
    work.mkdir(parents=True, exist_ok=True)
    notes: list[dict[str, Any]] = []
    builds: dict[str, DetectionArtifact] = {}
    serves: dict[str, list[str]] = {}

    def add(key: str, profile: str, factory: Callable[[], DetectionArtifact]) -> None:
        if key not in builds:
            try:
                builds[key] = factory()
            except BuildToolError as exc:
                notes.append(_note(profile, key, "not_built", str(exc)))
                return
        serves.setdefault(key, []).append(profile)

    fp32 = DetectionArtifact("onnx-fp32", request.fp32_onnx, _artifact("model-fp32.onnx", "onnxruntime", "fp32"))
    calibration = request.calibration
    can_quantize = calibration is not None and len(calibration) > 0
    for profile in request.profiles:
        name = profile.name
        add("onnx-fp32", name, lambda: fp32)
        settings = QuantizationSettings.from_profile(profile.quantization, **request.quantization_overrides)
        if can_quantize:
            assert calibration is not None

            def onnx_int8(settings: QuantizationSettings = settings) -> DetectionArtifact:
                log(f"quantizing ONNX INT8 ({settings.tag}), decode in float")
                path = quantize_onnx_static(request.fp32_onnx, work / f"model-int8-{settings.tag}.onnx", calibration,
                                            settings, INPUT_NAME, exclude_node_prefixes=(DECODE_SCOPE,))
                return DetectionArtifact(f"onnx-int8-{settings.tag}", path, _artifact(path.name, "onnxruntime", "int8"),
                                         settings={"quantizer": "onnxruntime.quantize_static", **settings.as_dict(),
                                                   "float_scope": DECODE_SCOPE,
                                                   "calibration_images": len(calibration)})
            add(f"onnx-int8-{settings.tag}", name, onnx_int8)
        else:
            notes.append(_note(name, "onnx-int8", "not_built", "no calibration data: give a dataset to quantize"))

        if any(choice.runtime == "openvino" for choice in profile.runtimes):
            for precision in ("fp32", "fp16"):
                def ov_float(precision: str = precision) -> DetectionArtifact:
                    log(f"converting OpenVINO IR {precision.upper()}")
                    xml, weights = convert_ir(request.fp32_onnx, work / f"model-ov-{precision}.xml",
                                              fp16=precision == "fp16")
                    return DetectionArtifact(f"openvino-{precision}", xml, _artifact(xml.name, "openvino", precision),
                                             extra_files=[weights], settings={"converter": "openvino.convert_model"})
                add(f"openvino-{precision}", name, ov_float)
            if can_quantize and request.use_nncf and nncf_available():
                assert calibration is not None

                def ov_int8() -> DetectionArtifact:
                    log("quantizing OpenVINO IR INT8 with NNCF, decode in float")
                    xml, weights = quantize_ir_nncf(request.fp32_onnx, work / "model-ov-int8.xml", calibration,
                                                    ignored_name_patterns=(f"{DECODE_SCOPE}.*",))
                    return DetectionArtifact("openvino-int8", xml, _artifact(xml.name, "openvino", "int8"),
                                             extra_files=[weights],
                                             settings={"quantizer": "nncf.quantize", "preset": "performance",
                                                       "float_scope": DECODE_SCOPE,
                                                       "calibration_images": len(calibration)})
                add("openvino-int8", name, ov_int8)
            elif can_quantize:
                notes.append(_note(name, "openvino-int8", "not_built", "NNCF is not installed"))

        for choice in profile.runtimes:
            if choice.runtime != "litert" or getattr(choice, "delegate", None) is not None:
                continue
            if not litert_available() or request.torch_model is None:
                reason = NOT_INSTALLED if not litert_available() else "no PyTorch model: litert-torch converts PyTorch modules only"
                notes.append(_note(name, f"litert-{choice.precision}", "not_built", reason))
                continue
            if choice.precision == "int8" and not can_quantize:
                notes.append(_note(name, "litert-int8", "not_built", "no calibration data: give a dataset to quantize"))
                continue
            model = request.torch_model

            def litert(precision: str = choice.precision, model: nn.Module = model) -> DetectionArtifact:
                log(f"converting LiteRT {precision.upper()} (litert-torch)")
                calib = calibration if precision == "int8" else None
                path = convert_tflite(model, request.spec, work / f"model-{precision}.tflite", calib,
                                      quantize_modules=(_QUANTIZED_MODULE,) if calib is not None else ())
                how: dict[str, Any] = {"converter": "litert_torch.convert"}
                if calib is not None:
                    how.update(quantizer="litert_torch PT2E", quantized_module=_QUANTIZED_MODULE,
                               calibration_images=len(calib))
                return DetectionArtifact(f"litert-{precision}", path, _artifact(path.name, "litert", precision),
                                         settings=how)
            add(f"litert-{choice.precision}", name, litert)
        for target in [*profile.built_on_device, *profile.built_externally]:
            notes.append(_note(name, target, "not_built", f"{target} is not built for detectors here"))

    fp32_eval: DetectionEvaluation | None = None
    data = request.evaluation
    def evaluate(built: DetectionArtifact, data: DetectionTensors) -> DetectionEvaluation:
        return evaluate_artifact(built.artifact.runtime, built.path, data, block=request.block,
                                 labels=request.labels, spec=request.spec, threads=request.threads)

    if data is not None and len(data):
        log("evaluating the FP32 model through the agent's decoder")
        fp32_eval = evaluate(fp32, data)
    fp32_golden = golden_detections(_write_golden(fp32, request.golden_inputs, request.threads), request.block,
                                    request.labels, request.spec)
    for key, built in builds.items():
        built.artifact = built.artifact.model_copy(update={"profiles": sorted(set(serves[key]))})
        if built is fp32:
            built.evaluation = fp32_eval
            continue
        log(f"evaluating {built.artifact.file}")
        try:
            golden = golden_detections(_write_golden(built, request.golden_inputs, request.threads), request.block,
                                       request.labels, request.spec)
            if data is not None and len(data):
                built.evaluation = evaluate(built, data)
        except (BuildToolError, ValueError) as exc:
            built.gate = GateDecision("rejected", [f"cannot run {built.artifact.file}: {exc}"])
            continue
        if built.artifact.precision == "int8":
            if fp32_eval is None or built.evaluation is None:
                built.gate = GateDecision("rejected", ["no labelled test set: INT8 mAP cannot be checked"])
            else:
                built.gate = detection_quantization_gate(fp32_eval, built.evaluation, request.gate, fp32_golden, golden)
    for key, built in builds.items():
        for profile_name in serves[key]:
            message = "accepted" if built.accepted else "; ".join(built.gate.reasons if built.gate else [])
            notes.append(_note(profile_name, key, "built" if built.accepted else "rejected", message))
    return DetectionBuildOutcome(artifacts=list(builds.values()), notes=notes, fp32_evaluation=fp32_eval)
