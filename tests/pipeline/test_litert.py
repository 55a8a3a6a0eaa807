"""LiteRT builds: FP32 and INT8 .tflite from the trained PyTorch model, through the same gate.

litert-torch runs in its own environment (``make test`` builds ``.venv-litert`` and sets
EDGEFLEET_LITERT_PYTHON); the artifacts are evaluated, gated and replayed by the agent's
own LiteRT backend (ai-edge-litert) here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.profiles import load_profiles
from agent.runtime.litert import LiteRtBackend
from cloud.pipeline.data.dataset import load_tensors_with_index, scan_imagefolder
from cloud.pipeline.optimize.build import BuildOutcome, BuildRequest, EvaluationSet, build_for_profiles
from cloud.pipeline.optimize.litert import NOT_INSTALLED, litert_available
from cloud.pipeline.optimize.quantize import select_calibration
from cloud.pipeline.train.trainer import DEFAULT_SPEC
from tests.pipeline.conftest import TrainedOnnx

# Each test converts through litert-torch in its own process: minutes of CPU, more beside a parallel worker.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


def _build(good_onnx: TrainedOnnx, work: Path, calibration: np.ndarray | None = None) -> BuildOutcome:
    dataset = scan_imagefolder(good_onnx.data_root)
    x_test, y_test, test_samples = load_tensors_with_index(dataset.split("test"), dataset.labels, DEFAULT_SPEC)
    x_train = load_tensors_with_index(dataset.split("train"), dataset.labels, DEFAULT_SPEC)[0]
    return build_for_profiles(BuildRequest(
        fp32_onnx=good_onnx.onnx_path, spec=DEFAULT_SPEC, labels=dataset.labels,
        profiles=[load_profiles()["rpi5-arm64"]], work_dir=work,
        calibration=select_calibration(x_train, 256, 0) if calibration is None else calibration,
        evaluation=EvaluationSet(x_test, y_test, [s.meta for s in test_samples], dataset.labels),
        golden_inputs=x_test[:4], torch_model=good_onnx.torch_model,
    ))


def test_litert_int8_is_built_evaluated_gated_and_replayed_by_the_agent(good_onnx: TrainedOnnx, tmp_path: Path) -> None:
    assert litert_available(), NOT_INSTALLED
    outcome = _build(good_onnx, tmp_path / "build")
    litert = {a.artifact.precision: a for a in outcome.artifacts if a.artifact.runtime == "litert"}
    assert set(litert) == {"int8", "fp32"}, [n for n in outcome.notes if "litert" in n["target"]]
    fp32 = litert["fp32"]  # converted from the same PyTorch module: the same model as the ONNX FP32
    assert fp32.evaluation is not None and outcome.fp32_evaluation is not None
    assert abs(fp32.evaluation.accuracy - outcome.fp32_evaluation.accuracy) < 1e-9
    int8 = litert["int8"]
    assert int8.settings["quantizer"] == "litert_torch PT2E" and int8.settings["calibration_images"] == 256
    # Evaluated on the test set and gated like every INT8 artifact: a working model (a few
    # points from FP32 at most), and the gate's decision with its reasons either way.
    assert int8.evaluation is not None and outcome.fp32_evaluation is not None
    assert int8.evaluation.accuracy >= outcome.fp32_evaluation.accuracy - 0.05
    assert int8.gate is not None and int8.gate.status in ("accepted", "rejected")
    drop_pp = (outcome.fp32_evaluation.accuracy - int8.evaluation.accuracy) * 100
    assert (int8.gate.status == "accepted") == (drop_pp <= 1.0 and not any(
        r.startswith(("accuracy drop", "slice")) and "exceeds" in r for r in int8.gate.reasons)), int8.gate.reasons

    # Really int8: every convolution runs on int8 weights, not on float ones behind Q/DQ pairs.
    backend = LiteRtBackend(int8.path, int8.artifact, threads=1)
    interpreter = backend._interpreter
    dtypes = {d["index"]: d["dtype"] for d in interpreter.get_tensor_details()}
    convolutions = [op for op in interpreter._get_ops_details() if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D")]
    assert len(convolutions) >= 10
    assert all(dtypes[op["inputs"][1]] == np.int8 for op in convolutions)

    # The device's self-test: its backend reproduces the golden outputs within the artifact's tolerance.
    golden = np.load(int8.path.with_name(int8.artifact.golden_file or ""))
    outputs = np.concatenate([backend.run(x[np.newaxis]) for x in golden["inputs"]])
    assert np.abs(outputs - golden["outputs"]).max() <= int8.artifact.golden_tolerance


def test_litert_int8_calibrated_on_one_blank_image_is_rejected(good_onnx: TrainedOnnx, tmp_path: Path) -> None:
    assert litert_available(), NOT_INSTALLED
    blank = np.zeros((1, *DEFAULT_SPEC.input_shape(1)[1:]), dtype=np.float32)
    outcome = _build(good_onnx, tmp_path / "build", calibration=blank)
    int8 = next(a for a in outcome.artifacts if a.artifact.runtime == "litert")
    assert int8.gate is not None and int8.gate.status == "rejected"
    assert any(reason.startswith("accuracy drop") for reason in int8.gate.reasons), int8.gate.reasons


def test_without_a_converter_litert_is_marked_not_built_with_what_to_do(good_onnx: TrainedOnnx, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEFLEET_LITERT_PYTHON", str(tmp_path / "no-such-python"))
    outcome = _build(good_onnx, tmp_path / "build")
    assert not any(a.artifact.runtime == "litert" for a in outcome.artifacts)
    note = next(n for n in outcome.notes if n["target"] == "litert-int8")
    assert note["status"] == "not_built" and "EDGEFLEET_LITERT_PYTHON" in note["message"]
