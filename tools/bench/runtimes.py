"""Benchmark: every runtime/precision side by side on one model, in one process.

Trains a MobileNetV2-style model on synthetic scenes (or loads one with --onnx and
--data), builds its artifacts for a firmware profile with the pipeline's own build
(ONNX FP32, ONNX INT8 QDQ, OpenVINO IR FP32/FP16/INT8), and measures for each:
p50 latency at batch 1 on the same input, and accuracy on the test split. Latency
rounds are interleaved across runtimes so that noise from other processes on a
shared machine falls on all of them alike.

The last line is:
``bench-runtimes: best=<runtime>-<precision> speedup_vs_ort_fp32=<x> accuracy_drop_pp=<y>``
where best is the fastest artifact that passed its quantization gate, the speedup is
ORT FP32's p50 over best's p50, and the drop is ORT FP32's test accuracy minus best's,
in percentage points.

    python tools/bench/runtimes.py --quick        # a few minutes on 2 cores; reruns reuse the model
    python tools/bench/runtimes.py                # bigger dataset, more rounds
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from agent.profiles import load_profiles
from cloud.pipeline.data.dataset import load_tensors_with_index, scan_imagefolder
from cloud.pipeline.data.synth import write_synthetic_dataset
from cloud.pipeline.data.validate import validate_dataset
from cloud.pipeline.evaluate.gates import QuantizationGateConfig, quantization_gate
from cloud.pipeline.evaluate.metrics import evaluate_predictions
from cloud.pipeline.optimize.build import BuildRequest, EvaluationSet, build_for_profiles
from cloud.pipeline.optimize.openvino_ir import convert_ir
from cloud.pipeline.optimize.quantize import select_calibration
from cloud.pipeline.optimize.runners import ArtifactRunner, run_batched, runner_for
from cloud.pipeline.train.trainer import TrainConfig, export_onnx, spec_for_input_size, train


@dataclass
class Candidate:
    name: str  # runtime-precision, as printed
    detail: str
    runtime: str
    path: Path
    accuracy: float
    accepted: bool
    gate_reasons: list[str]
    p50_ms: float = 0.0


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _train_model(data_root: Path, work: Path, input_size: int, *, low_res: int, epochs_low: int, epochs_full: int,
                 seed: int) -> tuple[Path, object]:
    """Train at ``low_res`` first, then fine-tune at ``input_size`` (the network is fully convolutional)."""
    dataset, report = validate_dataset(scan_imagefolder(data_root))
    _log(f"dataset {dataset.dataset_id}: {len(dataset.samples)} images, {len(report.issues)} validation issues")
    spec = spec_for_input_size(input_size)
    config = TrainConfig(architecture="mobilenetv2", width_multiplier=1.0, epochs=epochs_low, batch_size=16, seed=seed)
    started = time.monotonic()
    state = None
    if low_res < input_size:
        low = train(dataset, config, spec_for_input_size(low_res), show_progress=False)
        _log(f"trained at {low_res}px: test accuracy {low.evaluation.accuracy:.3f} ({time.monotonic() - started:.0f}s)")
        state = low.model.state_dict()
        config = TrainConfig(architecture="mobilenetv2", width_multiplier=1.0, epochs=epochs_full, batch_size=16,
                             learning_rate=2e-3, seed=seed)
    full = train(dataset, config, spec, show_progress=False, initial_state=state)
    _log(f"trained at {input_size}px: test accuracy {full.evaluation.accuracy:.3f} ({time.monotonic() - started:.0f}s)")
    return export_onnx(full.model, spec, work / "model-trained.onnx"), dataset


def _measure(candidates: list[Candidate], x: npt.NDArray[np.float32], threads: int, rounds: int,
             calls_per_round: int) -> None:
    runners: list[ArtifactRunner] = [runner_for(c.runtime, c.path, threads) for c in candidates]
    for runner in runners:
        for _ in range(20):  # warm-up: first calls allocate and pick kernels
            runner(x)
    samples: list[list[float]] = [[] for _ in candidates]
    for _ in range(rounds):
        for index, runner in enumerate(runners):
            for _ in range(calls_per_round):
                started = time.perf_counter()
                runner(x)
                samples[index].append(time.perf_counter() - started)
    for candidate, timings in zip(candidates, samples, strict=True):
        candidate.p50_ms = float(np.median(timings) * 1000)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small dataset, few epochs and rounds")
    parser.add_argument("--profile", default="x86-64-avx512-vnni", help="firmware profile to build for")
    parser.add_argument("--input-size", type=int, default=None, help="model input size (default: the profile's)")
    parser.add_argument("--threads", type=int, default=None, help="inference threads (default: the profile's)")
    parser.add_argument("--onnx", type=Path, help="benchmark this ONNX model instead of training one (needs --data)")
    parser.add_argument("--data", type=Path, help="ImageFolder dataset for --onnx (labels = class directories)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "edgefleet-bench",
                        help="keeps the dataset and trained model between runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="also print the table as JSON (before the last line)")
    args = parser.parse_args(argv)

    profile = load_profiles()[args.profile]
    input_size = args.input_size or profile.input_size
    threads = args.threads or profile.threads
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    per_class, epochs_low, rounds = (120, 8, 15) if args.quick else (300, 12, 40)
    spec = spec_for_input_size(input_size)

    if args.onnx:
        if not args.data:
            parser.error("--onnx needs --data (a labelled ImageFolder directory)")
        onnx_path, dataset = args.onnx, validate_dataset(scan_imagefolder(args.data))[0]
    else:
        tag = f"{input_size}px-{per_class}pc-{epochs_low}ep-seed{args.seed}"
        data_root = work / f"data-{tag}"
        if not data_root.exists():
            write_synthetic_dataset(data_root, images_per_class=per_class, size=input_size, seed=args.seed + 11)
        cached = work / f"model-{tag}.onnx"
        if cached.exists():
            # Same data, config and seed train to the same weights: reuse them (see --workdir).
            _log(f"loading the model trained earlier: {cached}")
            onnx_path, dataset = cached, validate_dataset(scan_imagefolder(data_root))[0]
        else:
            onnx_path, dataset = _train_model(data_root, work, input_size, low_res=min(96, input_size),
                                              epochs_low=epochs_low, epochs_full=1, seed=args.seed)
            onnx_path = onnx_path.replace(cached)

    x_test, y_test, test_samples = load_tensors_with_index(dataset.split("test"), dataset.labels, spec)  # type: ignore[attr-defined]
    evaluation = EvaluationSet(x_test, y_test, [s.meta for s in test_samples], dataset.labels)  # type: ignore[attr-defined]
    x_train = load_tensors_with_index(dataset.split("train"), dataset.labels, spec)[0]  # type: ignore[attr-defined]
    x_val = load_tensors_with_index(dataset.split("val"), dataset.labels, spec)[0]  # type: ignore[attr-defined]
    gate = QuantizationGateConfig()
    _log(f"building for {profile.name} at {input_size}px (test set: {len(x_test)} images)")
    outcome = build_for_profiles(BuildRequest(
        fp32_onnx=onnx_path, spec=spec, labels=dataset.labels, profiles=[profile], work_dir=work / "build",  # type: ignore[attr-defined]
        calibration=select_calibration(x_train, 128, args.seed), evaluation=evaluation, golden_inputs=x_val[:8],
        gate=gate,
    ), log=_log)
    assert outcome.fp32_evaluation is not None
    candidates = [
        Candidate(f"{a.artifact.runtime}-{a.artifact.precision}", a.settings.get("quantizer", a.artifact.file),
                  a.artifact.runtime, a.path, a.evaluation.accuracy if a.evaluation else float("nan"), a.accepted,
                  a.gate.reasons if a.gate else [])
        for a in outcome.artifacts
    ]
    # Also OpenVINO running the INT8 QDQ ONNX itself (the other INT8 route DESIGN.md measured).
    qdq = next((a for a in outcome.artifacts if a.artifact.runtime == "onnxruntime" and a.artifact.precision == "int8"), None)
    if qdq is not None:
        xml, _ = convert_ir(qdq.path, work / "build" / "model-ov-int8-qdq.xml")
        scores = run_batched(runner_for("openvino", xml), x_test)
        report = evaluate_predictions(scores.argmax(axis=1), y_test, dataset.labels, evaluation.metadata)  # type: ignore[attr-defined]
        golden_fp32 = run_batched(runner_for("onnxruntime", onnx_path), x_val[:8])
        decision = quantization_gate(outcome.fp32_evaluation, report, gate, golden_fp32,
                                     run_batched(runner_for("openvino", xml), x_val[:8]))
        candidates.append(Candidate("openvino-int8", "ORT QDQ read by OpenVINO", "openvino", xml, report.accuracy,
                                    decision.passed, decision.reasons))

    _log(f"measuring p50 latency, batch 1, {threads} thread(s), {rounds} interleaved rounds")
    _measure(candidates, x_test[:1], threads, rounds, calls_per_round=10)
    reference = next(c for c in candidates if c.name == "onnxruntime-fp32")
    print(f"{'runtime-precision':<20} {'route':<34} {'p50 ms':>8} {'speedup':>8} {'accuracy':>9} {'gate':>9}")
    for c in sorted(candidates, key=lambda c: c.p50_ms):
        print(f"{c.name:<20} {c.detail[:34]:<34} {c.p50_ms:>8.3f} {reference.p50_ms / c.p50_ms:>8.2f} "
              f"{c.accuracy:>9.4f} {'accepted' if c.accepted else 'rejected':>9}")
        for reason in c.gate_reasons:
            print(f"    rejected: {reason}")
    if args.json:
        print(json.dumps([{"name": c.name, "route": c.detail, "p50_ms": c.p50_ms, "accuracy": c.accuracy,
                           "accepted": c.accepted} for c in candidates]))
    best = min((c for c in candidates if c.accepted), key=lambda c: c.p50_ms)
    speedup = reference.p50_ms / best.p50_ms
    drop_pp = (reference.accuracy - best.accuracy) * 100
    print(f"bench-runtimes: best={best.name} speedup_vs_ort_fp32={speedup:.2f} accuracy_drop_pp={drop_pp:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
