"""Runtime selection by measurement, in process on real runtimes (no broker).

A package offering the same model for ONNX Runtime and OpenVINO, plus a copy whose
golden vectors disagree, and a LiteRT artifact this device cannot load: every
candidate is measured, the disagreeing and unloadable ones are discarded with a
reason, and the fastest survivor wins.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from agent.contract import ModelArtifact, PackageManifest, RuntimeMeasurement, describe_file, utc_now
from agent.profiles import load_profiles
from agent.runtime import available_devices
from agent.runtime.select import fastest, golden_error, plan_candidates, self_test, time_backend
from tests.agent.onnx_models import LABELS, SPEC, golden_for, scored_model

PROFILE = "x86-64-avx2"


def _package(tmp_path: Path) -> PackageManifest:
    model = scored_model(tmp_path / "model.onnx", [1.0, 2.0, 0.5, 0.0])
    (tmp_path / "model-copy.onnx").write_bytes(model.read_bytes())
    (tmp_path / "model.tflite").write_bytes(b"not a flatbuffer")
    golden_for(model, tmp_path / "golden.npz")
    golden_for(model, tmp_path / "golden-bad.npz", perturb=0.5)
    artifacts = [
        ModelArtifact(file="model.onnx", runtime="onnxruntime", precision="fp32", golden_file="golden.npz"),
        ModelArtifact(file="model.onnx", runtime="openvino", precision="fp32", golden_file="golden.npz"),
        ModelArtifact(file="model-copy.onnx", runtime="onnxruntime", precision="fp32", golden_file="golden-bad.npz",
                      golden_tolerance=1e-3),
        ModelArtifact(file="model.tflite", runtime="litert", precision="int8"),
        ModelArtifact(file="model.onnx", runtime="onnxruntime", precision="int8", profiles=["rpi5-arm64"]),
    ]
    names = ["model.onnx", "model-copy.onnx", "model.tflite", "golden.npz", "golden-bad.npz"]
    return PackageManifest(package_id="p1", model_name="m", model_version="1", created_at=utc_now(),
                           hardware_profiles=[PROFILE, "rpi5-arm64"], labels=LABELS, preprocessing=SPEC,
                           artifacts=artifacts, files=[describe_file(tmp_path / n) for n in names])


def test_candidates_follow_the_profile_and_what_is_installed(tmp_path: Path) -> None:
    manifest = _package(tmp_path)
    rpi = [c.model_dump() for c in load_profiles()["rpi5-arm64"].runtimes]
    candidates, skipped = plan_candidates(manifest, hardware_profile="rpi5-arm64", profile_runtimes=rpi,
                                          available={"onnxruntime": ["CPUExecutionProvider"], "litert": []})
    # The Pi profile lists litert int8, onnxruntime int8 and fp32; OpenVINO is not among them.
    assert [(c.artifact.runtime, c.artifact.precision, c.artifact.file) for c in candidates] == [
        ("onnxruntime", "fp32", "model.onnx"), ("onnxruntime", "fp32", "model-copy.onnx"),
        ("onnxruntime", "int8", "model.onnx")]
    assert [(m.runtime, m.reason) for m in skipped] == [("litert", "litert is not installed")]
    # An accelerated provider present on the device adds a candidate; a GPU the profile names but the device lacks is skipped.
    igpu = [c.model_dump() for c in load_profiles()["intel-igpu"].runtimes]
    candidates, skipped = plan_candidates(
        manifest, hardware_profile=PROFILE, profile_runtimes=igpu,
        available={"onnxruntime": ["CUDAExecutionProvider", "CPUExecutionProvider"], "openvino": ["CPU"]})
    assert ("onnxruntime", "CUDAExecutionProvider", "model.onnx") in {
        (c.artifact.runtime, c.device, c.artifact.file) for c in candidates}
    assert not any(c.artifact.runtime == "openvino" for c in candidates)  # the profile wants openvino fp16 on GPU
    # Without a profile every artifact is a candidate, on its default device and on each accelerator present.
    candidates, _ = plan_candidates(manifest, hardware_profile=PROFILE, profile_runtimes=None,
                                    available={"onnxruntime": ["CPUExecutionProvider"], "openvino": ["CPU", "GPU", "NPU"],
                                               "litert": ["CPU"]})
    assert {c.device for c in candidates if c.artifact.runtime == "openvino"} == {"", "GPU", "NPU"}


def test_disagreeing_and_unloadable_candidates_are_discarded_and_the_fastest_wins(tmp_path: Path) -> None:
    manifest = _package(tmp_path)
    profile = [c.model_dump() for c in load_profiles()[PROFILE].runtimes]
    runtimes = {a.runtime for a in manifest.artifacts}
    available = {runtime: available_devices(runtime) for runtime in runtimes}
    candidates, _measurements = plan_candidates(manifest, hardware_profile=PROFILE, profile_runtimes=profile,
                                               available=available)
    # The profile names no litert or int8 ONNX for this package here: only fp32 ONNX Runtime and OpenVINO remain.
    assert {(c.artifact.runtime, c.artifact.file) for c in candidates} == {
        ("onnxruntime", "model.onnx"), ("openvino", "model.onnx"), ("onnxruntime", "model-copy.onnx")}
    timed: list[RuntimeMeasurement] = []
    for candidate in candidates:
        measurement, backend, sample = self_test(candidate, manifest, tmp_path, threads=1)
        if backend is not None:
            assert sample is not None
            measurement = measurement.model_copy(update={"median_latency_ms": time_backend(backend, sample, runs=5)})
        timed.append(measurement)
    by_file = {(m.runtime, m.file): m for m in timed}
    bad = by_file[("onnxruntime", "model-copy.onnx")]
    assert not bad.accepted and "golden outputs disagree" in bad.reason and bad.max_abs_error == 0.5
    good = [m for m in timed if m.accepted]
    assert {m.runtime for m in good} == {"onnxruntime", "openvino"}
    assert all(m.max_abs_error is not None and m.max_abs_error <= 1e-3 for m in good)
    winner = timed[fastest(timed) or 0]
    assert winner.accepted and winner.median_latency_ms == min(m.median_latency_ms or 1e9 for m in good)


def test_litert_artifact_that_does_not_load_is_a_reason_not_a_crash(tmp_path: Path) -> None:
    manifest = _package(tmp_path)
    candidates, _ = plan_candidates(manifest, hardware_profile=PROFILE, profile_runtimes=None,
                                    available={"litert": ["CPU"], "onnxruntime": [], "openvino": []})
    litert = next(c for c in candidates if c.artifact.runtime == "litert")
    measurement, backend, _ = self_test(litert, manifest, tmp_path, threads=1)
    assert backend is None and not measurement.accepted and "LiteRT could not load" in measurement.reason


def test_golden_error_never_accepts_nan_or_a_wrong_shape() -> None:
    expected = np.zeros((1, 4), dtype=np.float32)
    assert golden_error(np.full((1, 4), np.nan, dtype=np.float32), expected) == float("inf")
    assert golden_error(np.zeros((1, 3), dtype=np.float32), expected) == float("inf")
    assert golden_error(np.full((1, 4), 0.25, dtype=np.float32), expected) == 0.25


def test_an_openvino_fp32_artifact_runs_in_fp32(tmp_path: Path) -> None:
    """OpenVINO's CPU plugin runs FP32 models in bfloat16 on CPUs with AVX512_BF16 or AMX
    unless told otherwise (Zen 4 here): ~3 significant digits, not the model the gate measured."""
    from onnx import TensorProto, helper, numpy_helper, save

    from agent.runtime import load_backend

    rng = np.random.default_rng(7)
    weight = rng.normal(size=(3 * 32 * 32, 64)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["flat"], axis=1), helper.make_node("MatMul", ["flat", "w"], ["logits"])],
        "dense", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 64])], [numpy_helper.from_array(weight, "w")])
    path = tmp_path / "dense.onnx"
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    x = rng.random((1, 3, 32, 32), dtype=np.float32)
    expected = x.reshape(1, -1).astype(np.float64) @ weight.astype(np.float64)
    for runtime in ("onnxruntime", "openvino"):
        backend = load_backend(ModelArtifact(file="dense.onnx", runtime=runtime, precision="fp32"), path)
        relative = np.abs(backend.run(x) - expected).max() / np.abs(expected).max()
        assert relative < 1e-5, f"{runtime}: relative error {relative:.1e}, more than FP32 rounding"
