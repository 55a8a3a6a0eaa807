"""Per-profile builds: every artifact a profile can use, evaluated, gated, with golden vectors.

For each firmware profile, build what can be built on this machine:

* ONNX FP32 (every profile; the universal fallback),
* ONNX INT8 QDQ with the profile's quantization settings (ONNX Runtime static quantization),
* OpenVINO IR FP32 / FP16 / INT8 for profiles that list OpenVINO (INT8 via NNCF when
  installed, else OpenVINO reading the INT8 QDQ ONNX),
* LiteRT ``.tflite`` FP32 and INT8 for profiles that list LiteRT, when a litert-torch converter is
  available (``cloud/pipeline/optimize/litert.py``).

What cannot be built here (a TensorRT engine, an Edge TPU compile) becomes a note
with status ``built_on_device`` or ``built_externally``. Every INT8 artifact passes
the quantization gate or is left out of the package with its reasons.
Identical artifacts (same runtime, precision, settings) are built once and list
every profile they serve.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from torch import nn

from agent.contract import ModelArtifact, PreprocessSpec, sha256_file
from agent.profiles import FirmwareProfile
from cloud.pipeline.errors import BuildToolError
from cloud.pipeline.evaluate.gates import GateDecision, QuantizationGateConfig, quantization_gate
from cloud.pipeline.evaluate.metrics import EvaluationReport, evaluate_predictions
from cloud.pipeline.optimize.activation import onnx_output_activation
from cloud.pipeline.optimize.litert import NOT_INSTALLED, convert_tflite, litert_available
from cloud.pipeline.optimize.openvino_ir import convert_ir, nncf_available, quantize_ir_nncf
from cloud.pipeline.optimize.quantize import QuantizationSettings, quantize_onnx_static
from cloud.pipeline.optimize.runners import run_batched, runner_for

# Largest absolute difference in raw scores a device's self-test accepts, relative to
# the largest score magnitude: FP32 differs across CPUs only in summation order;
# FP16 and INT8 kernels differ across ISAs (VNNI or not, NEON) by a quantization step.
_GOLDEN_RELATIVE_TOLERANCE = {"fp32": 1e-3, "fp16": 2e-2, "int8": 5e-2}


@dataclass
class EvaluationSet:
    """Preprocessed test images with labels and per-image metadata (for slices)."""

    x: npt.NDArray[np.float32]
    y: npt.NDArray[np.int64]
    metadata: list[dict[str, str]]
    labels: list[str]


@dataclass
class PackagedArtifact:
    """One file a build made, with what its gate decided; the quality figures depend on the task."""

    key: str
    path: Path
    artifact: ModelArtifact
    extra_files: list[Path] = field(default_factory=list)
    gate: GateDecision | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def accepted(self) -> bool:
        return self.gate is None or self.gate.passed

    def quality(self) -> dict[str, Any]:
        """The task's figures for :meth:`summary` (accuracy, mAP, per slice)."""
        return {}

    def summary(self) -> dict[str, Any]:
        return {
            "file": self.artifact.file, "runtime": self.artifact.runtime, "precision": self.artifact.precision,
            "profiles": list(self.artifact.profiles), "sha256": sha256_file(self.path),
            "size_bytes": self.path.stat().st_size + sum(p.stat().st_size for p in self.extra_files),
            "golden_file": self.artifact.golden_file, "golden_tolerance": self.artifact.golden_tolerance,
            **self.quality(),
            "settings": self.settings,
            "gate": self.gate.as_dict() if self.gate else None,
            "accepted": self.accepted,
        }


@dataclass
class BuiltArtifact(PackagedArtifact):
    """A classifier's artifact."""

    evaluation: EvaluationReport | None = None

    def quality(self) -> dict[str, Any]:
        return {
            "accuracy": self.evaluation.accuracy if self.evaluation else None,
            "slices": {k: v.accuracy for k, v in self.evaluation.slices.items()} if self.evaluation else {},
        }


@dataclass
class BuildOutcome:
    artifacts: list[BuiltArtifact]
    notes: list[dict[str, Any]]
    fp32_evaluation: EvaluationReport | None

    @property
    def accepted(self) -> list[BuiltArtifact]:
        return [a for a in self.artifacts if a.accepted]


@dataclass(frozen=True)
class BuildRequest:
    fp32_onnx: Path
    spec: PreprocessSpec
    labels: list[str]
    profiles: list[FirmwareProfile]
    work_dir: Path
    calibration: npt.NDArray[np.float32] | None
    evaluation: EvaluationSet | None
    golden_inputs: npt.NDArray[np.float32]
    torch_model: nn.Module | None = None
    quantization_overrides: dict[str, Any] = field(default_factory=dict)
    gate: QuantizationGateConfig = field(default_factory=QuantizationGateConfig)
    use_nncf: bool = True


def _note(profile: str, target: str, status: str, message: str) -> dict[str, Any]:
    return {"profile": profile, "target": target, "status": status, "message": message}


def _listed(profile: FirmwareProfile, runtime: str) -> bool:
    return any(choice.runtime == runtime for choice in profile.runtimes)


def _evaluate(runtime: str, path: Path, data: EvaluationSet) -> EvaluationReport:
    scores = run_batched(runner_for(runtime, path), data.x)
    return evaluate_predictions(scores.argmax(axis=1), data.y, data.labels, data.metadata)


def _write_golden(built: BuiltArtifact, golden_inputs: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    # Batch 1, one input at a time: exactly how the agent's self-test replays them.
    run = runner_for(built.artifact.runtime, built.path)
    outputs = np.concatenate([run(golden_inputs[i : i + 1]) for i in range(len(golden_inputs))])
    golden_path = built.path.with_name(f"golden-{built.path.stem}.npz")
    np.savez(golden_path, inputs=golden_inputs, outputs=outputs)
    scale = max(1.0, float(np.abs(outputs).max())) if outputs.size else 1.0
    tolerance = round(_GOLDEN_RELATIVE_TOLERANCE[built.artifact.precision] * scale, 6)
    built.artifact = built.artifact.model_copy(update={"golden_file": golden_path.name, "golden_tolerance": tolerance})
    built.extra_files.append(golden_path)
    return outputs


def build_for_profiles(request: BuildRequest, log: Callable[[str], None] = lambda _: None) -> BuildOutcome:
    """Build, evaluate and gate every artifact for ``request.profiles``.

    Raises:
        BuildToolError: the FP32 model itself cannot be run (nothing else can be trusted then).
    """
    work = request.work_dir
    work.mkdir(parents=True, exist_ok=True)
    notes: list[dict[str, Any]] = []
    builds: dict[str, BuiltArtifact] = {}
    serves: dict[str, list[str]] = {}

    def add(key: str, profile: str, factory: Callable[[], BuiltArtifact | None]) -> None:
        if key not in builds:
            try:
                made = factory()
            except BuildToolError as exc:
                notes.append(_note(profile, key, "not_built", str(exc)))
                return
            if made is None:
                return
            builds[key] = made
        serves.setdefault(key, []).append(profile)

    # An imported classifier that ends in Softmax already outputs probabilities: every
    # artifact built from it says so, or the device would apply softmax a second time.
    activation = onnx_output_activation(request.fp32_onnx)
    fp32 = BuiltArtifact("onnx-fp32", request.fp32_onnx,
                         ModelArtifact(file="model-fp32.onnx", runtime="onnxruntime", precision="fp32", output_activation=activation))
    can_quantize = request.calibration is not None and len(request.calibration) > 0
    for profile in request.profiles:
        name = profile.name
        add("onnx-fp32", name, lambda: fp32)
        settings = QuantizationSettings.from_profile(profile.quantization, **request.quantization_overrides)
        onnx_int8_key = f"onnx-int8-{settings.tag}"

        def onnx_int8(settings: QuantizationSettings = settings, key: str = onnx_int8_key) -> BuiltArtifact | None:
            assert request.calibration is not None
            log(f"quantizing ONNX INT8 ({settings.tag})")
            path = quantize_onnx_static(request.fp32_onnx, work / f"model-int8-{settings.tag}.onnx",
                                        request.calibration, settings)
            return BuiltArtifact(key, path, ModelArtifact(file=path.name, runtime="onnxruntime", precision="int8", output_activation=activation),
                                 settings={"quantizer": "onnxruntime.quantize_static", **settings.as_dict(),
                                           "calibration_images": len(request.calibration)})

        if can_quantize:
            add(onnx_int8_key, name, onnx_int8)
        else:
            notes.append(_note(name, "onnx-int8", "not_built", "no calibration data: give a dataset to quantize"))

        if _listed(profile, "openvino"):
            for precision in ("fp32", "fp16"):
                def ov_float(precision: str = precision) -> BuiltArtifact:
                    log(f"converting OpenVINO IR {precision.upper()}")
                    xml, weights = convert_ir(request.fp32_onnx, work / f"model-ov-{precision}.xml",
                                              fp16=precision == "fp16")
                    return BuiltArtifact(f"openvino-{precision}", xml,
                                         ModelArtifact(file=xml.name, runtime="openvino", precision=precision, output_activation=activation),  # type: ignore[arg-type]
                                         extra_files=[weights], settings={"converter": "openvino.convert_model"})
                add(f"openvino-{precision}", name, ov_float)
            if can_quantize:
                def ov_int8(settings: QuantizationSettings = settings, key: str = onnx_int8_key) -> BuiltArtifact | None:
                    assert request.calibration is not None
                    if request.use_nncf and nncf_available():
                        log("quantizing OpenVINO IR INT8 with NNCF")
                        xml, weights = quantize_ir_nncf(request.fp32_onnx, work / "model-ov-int8.xml",
                                                        request.calibration)
                        how = {"quantizer": "nncf.quantize", "preset": "performance",
                               "calibration_images": len(request.calibration)}
                    else:
                        source = builds.get(key)
                        if source is None:
                            return None
                        xml, weights = convert_ir(source.path, work / "model-ov-int8.xml")
                        how = {"quantizer": "onnxruntime QDQ read by OpenVINO", **source.settings}
                    return BuiltArtifact("openvino-int8", xml,
                                         ModelArtifact(file=xml.name, runtime="openvino", precision="int8", output_activation=activation),
                                         extra_files=[weights], settings=how)
                add("openvino-int8", name, ov_int8)

        for choice in profile.runtimes:
            if choice.runtime == "litert" and getattr(choice, "delegate", None) is None:
                if not litert_available() or request.torch_model is None:
                    reason = NOT_INSTALLED if not litert_available() else "no PyTorch model (imported ONNX): litert-torch converts PyTorch modules only"
                    notes.append(_note(name, f"litert-{choice.precision}", "not_built", reason))
                    continue
                if choice.precision == "int8" and not can_quantize:
                    notes.append(_note(name, "litert-int8", "not_built", "no calibration data: give a dataset to quantize"))
                    continue
                model = request.torch_model

                def litert(precision: str = choice.precision, model: nn.Module = model) -> BuiltArtifact:
                    log(f"converting LiteRT {precision.upper()} (litert-torch)")
                    calibration = request.calibration if precision == "int8" else None
                    path = convert_tflite(model, request.spec, work / f"model-{precision}.tflite", calibration)
                    how: dict[str, Any] = {"converter": "litert_torch.convert"}
                    if calibration is not None:
                        how.update(quantizer="litert_torch PT2E", weights="int8 symmetric per-channel",
                                   activations="int8", calibration_images=len(calibration))
                    return BuiltArtifact(f"litert-{precision}", path,
                                         ModelArtifact(file=path.name, runtime="litert", precision=precision, output_activation=activation),  # type: ignore[arg-type]
                                         settings=how)
                add(f"litert-{choice.precision}", name, litert)
            execution_provider = getattr(choice, "execution_provider", None)
            if execution_provider == "TensorrtExecutionProvider":
                notes.append(_note(name, "tensorrt-engine", "built_on_device",
                                   "a TensorRT engine is specific to the GPU and TensorRT version: ONNX Runtime's "
                                   "TensorRT execution provider builds it from model-fp32.onnx on first load "
                                   "(engine cache on the device)"))
            if getattr(choice, "delegate", None) == "edgetpu":
                notes.append(_note(name, "edgetpu-tflite", "built_externally",
                                   "needs Google's edgetpu_compiler (an x86 Linux binary, not a pip package) on a "
                                   "fully INT8 .tflite: run the external Edge TPU build job; not built here"))
        for target in profile.built_on_device:
            if not any(n["profile"] == name and n["target"] == target for n in notes):
                notes.append(_note(name, target, "built_on_device", f"{target} is built on the device"))
        for target in profile.built_externally:
            if not any(n["profile"] == name and n["target"] == target for n in notes):
                notes.append(_note(name, target, "built_externally", f"{target} is built by an external compiler"))

    # Evaluate everything on the same test set, then gate INT8 against FP32.
    fp32_eval: EvaluationReport | None = None
    if request.evaluation is not None and len(request.evaluation.x):
        try:
            fp32_eval = _evaluate("onnxruntime", request.fp32_onnx, request.evaluation)
        except BuildToolError:
            raise
    fp32_golden = _write_golden(fp32, request.golden_inputs)
    for key, built in builds.items():
        built.artifact = built.artifact.model_copy(update={"profiles": sorted(set(serves[key]))})
        if built is fp32:
            built.evaluation = fp32_eval
            continue
        log(f"evaluating {built.artifact.file}")
        golden = _write_golden(built, request.golden_inputs)
        if request.evaluation is not None and len(request.evaluation.x):
            built.evaluation = _evaluate(built.artifact.runtime, built.path, request.evaluation)
        if built.artifact.precision == "int8":
            if fp32_eval is None or built.evaluation is None:
                built.gate = GateDecision("rejected", ["no labelled test set: INT8 accuracy cannot be checked"])
            else:
                built.gate = quantization_gate(fp32_eval, built.evaluation, request.gate, fp32_golden, golden)
    for key, built in builds.items():
        for profile_name in serves[key]:
            status = "built" if built.accepted else "rejected"
            message = "accepted" if built.accepted else "; ".join(built.gate.reasons if built.gate else [])
            notes.append(_note(profile_name, key, status, message))
    return BuildOutcome(artifacts=list(builds.values()), notes=notes, fp32_evaluation=fp32_eval)
