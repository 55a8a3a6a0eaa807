"""Benchmark: a detector's artifacts side by side, end to end as a device runs them, in one process.

Trains the pipeline's grid detector on synthetic multi-object scenes (or loads the one a
previous run left in --workdir), builds every artifact of a firmware profile with the
pipeline's own detection build (ONNX FP32, ONNX INT8 QDQ, OpenVINO IR FP32/FP16/INT8 via
NNCF; LiteRT FP32/INT8 for comparison when a litert-torch converter is available), each
gated on mAP@0.5 against FP32, and measures for each, at batch 1 with the profile's
threads, through the agent's own backend and decoder:

* p50 latency of one frame: inference + decode + class-aware NMS + mapping the boxes back
  to the source frame (preprocessing excluded: it is the same for every artifact);
* p50 of decode + NMS alone on that artifact's output, and its share of the total;
* mAP@0.5 and mAP@0.5:0.95 on a held-out test set (a separate draw of the generator).

Latency rounds are interleaved across artifacts so that load from other processes on a
shared machine falls on all of them alike. The last line is:

``bench-detection: best=<runtime>-<precision> speedup_vs_ort_fp32=<x> map50=<m> map50_drop_pp=<d> decode_share=<s>``

where best is the fastest artifact of the profile's package that passed its gate, the
speedup is ORT FP32's p50 over best's, map50 is best's mAP@0.5, the drop is ORT FP32's
mAP@0.5 minus best's in percentage points, and decode_share is best's decode + NMS time
over its total.

    python tools/bench/detection.py --quick     # a few minutes on 2 cores; reruns reuse the model
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agent.infer.detect import detect
from agent.profiles import load_profiles
from cloud.pipeline.data.detection import load_detection_tensors, scan_detection_dataset
from cloud.pipeline.data.synth_detection import write_detection_dataset
from cloud.pipeline.evaluate.detection_gates import (
    DetectionQuantizationGateConfig,
    detection_quantization_gate,
)
from cloud.pipeline.optimize.detection_build import (
    DetectionBuildRequest,
    build_detection_for_profiles,
    evaluate_artifact,
    golden_detections,
    run_each,
)
from cloud.pipeline.optimize.litert import convert_tflite, litert_available
from cloud.pipeline.optimize.quantize import select_calibration
from cloud.pipeline.optimize.runners import device_backend_runner
from cloud.pipeline.train.detector import (
    DetectorConfig,
    detection_block,
    detection_spec_for,
    export_detector_onnx,
    load_detector,
    save_detector,
    train_detector,
)


@dataclass
class Candidate:
    name: str
    detail: str
    runtime: str
    path: Path
    map_50: float
    map_50_95: float
    accepted: bool
    gate_reasons: list[str]
    info_only: bool = False
    p50_ms: float = 0.0
    decode_p50_ms: float = 0.0


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller dataset, fewer epochs and rounds")
    parser.add_argument("--profile", default="x86-64-avx512-vnni", help="firmware profile to build for")
    parser.add_argument("--input-size", type=int, default=160, help="detector input size (multiple of 16)")
    parser.add_argument("--width", type=int, default=64, help="detector base width (multiple of 8)")
    parser.add_argument("--threads", type=int, default=None, help="inference threads (default: the profile's)")
    parser.add_argument("--train-threads", type=int, default=1, help="PyTorch threads for training")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "edgefleet-bench-detection",
                        help="keeps the datasets and the trained detector between runs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    profile = load_profiles()[args.profile]
    threads = args.threads or profile.threads
    spec = detection_spec_for(args.input_size)
    block = detection_block(spec)
    images, test_images, epochs, rounds = (1000, 300, 16, 10) if args.quick else (2000, 600, 24, 30)
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    data_root = work / f"data-{images}-seed{args.seed}"
    test_root = work / f"test-{test_images}-seed{args.seed}"
    for root, count, seed in ((data_root, images, args.seed + 11), (test_root, test_images, args.seed + 101)):
        if not root.exists():
            _log(f"writing {count} synthetic scenes to {root}")
            write_detection_dataset(root, images=count, seed=seed)
    dataset = scan_detection_dataset(data_root)
    # A separate held-out draw of the generator: the dataset's own test split would be
    # ~15 % of it, too few objects per slice to resolve a 1 pp mAP limit.
    test = load_detection_tensors(scan_detection_dataset(test_root).samples, spec)
    train_data = load_detection_tensors(dataset.split("train"), spec)
    config = DetectorConfig(epochs=epochs, width=args.width, seed=args.seed, threads=args.train_threads)
    tag = f"w{args.width}-{args.input_size}px-{images}img-{epochs}ep-seed{args.seed}-t{args.train_threads}"
    cached = work / f"detector-{tag}.pt"
    if cached.exists():
        _log(f"loading the detector trained earlier: {cached}")
        model = load_detector(cached)
    else:
        _log(f"training the detector ({len(train_data)} images, {epochs} epochs, width {args.width})")
        result = train_detector(dataset, config, spec, train_tensors=train_data,
                                on_epoch=lambda done, total, loss: _log(f"  epoch {done}/{total} loss {loss:.3f}"))
        _log(f"trained in {result.seconds:.0f}s")
        model = result.model
        save_detector(model, result.hyperparameters, len(dataset.labels), cached)
    onnx_path = export_detector_onnx(model, spec, work / "build" / "model-fp32.onnx")
    calibration = select_calibration(train_data.x, 128, args.seed)
    golden_inputs = test.x[:8]
    outcome = build_detection_for_profiles(DetectionBuildRequest(
        fp32_onnx=onnx_path, spec=spec, labels=dataset.labels, block=block, profiles=[profile],
        work_dir=work / "build", calibration=calibration, evaluation=test, golden_inputs=golden_inputs,
        torch_model=model, threads=threads), log=_log)
    fp32_eval = outcome.fp32_evaluation
    assert fp32_eval is not None
    candidates = [Candidate(f"{a.artifact.runtime}-{a.artifact.precision}",
                            str(a.settings.get("quantizer", a.settings.get("converter", a.artifact.file))),
                            a.artifact.runtime, a.path, a.evaluation.map_50 if a.evaluation else float("nan"),
                            a.evaluation.map_50_95 if a.evaluation else float("nan"), a.accepted,
                            a.gate.reasons if a.gate else [])
                  for a in outcome.artifacts]

    # LiteRT (XNNPACK) for comparison when this profile does not list it: same gate.
    if litert_available() and not any(c.runtime == "litert" for c in candidates):
        fp32_golden = golden_detections(run_each(device_backend_runner("onnxruntime", onnx_path, threads),
                                                 golden_inputs), block, dataset.labels, spec)
        for precision in ("fp32", "int8"):
            _log(f"converting LiteRT {precision.upper()} (comparison only)")
            path = convert_tflite(model, spec, work / "build" / f"model-{precision}.tflite",
                                  calibration if precision == "int8" else None,
                                  quantize_modules=("body",) if precision == "int8" else ())
            report = evaluate_artifact("litert", path, test, block=block, labels=dataset.labels, spec=spec,
                                       threads=threads)
            golden = golden_detections(run_each(device_backend_runner("litert", path, threads), golden_inputs),
                                       block, dataset.labels, spec)
            decision = detection_quantization_gate(fp32_eval, report, DetectionQuantizationGateConfig(), fp32_golden, golden)
            candidates.append(Candidate(f"litert-{precision}", "litert_torch (info)", "litert", path, report.map_50,
                                        report.map_50_95, precision == "fp32" or decision.passed,
                                        decision.reasons if precision == "int8" else [], info_only=True))

    _log(f"measuring p50 latency (inference + decode + NMS), batch 1, {threads} thread(s), {rounds} rounds")
    x = test.x[:1]
    width, height = test.sizes[0]
    runners = [device_backend_runner(c.runtime, c.path, threads) for c in candidates]

    def frame(index: int) -> tuple[float, float]:
        started = time.perf_counter()
        output = runners[index](x)
        decoding = time.perf_counter()
        detect(output, detection=block, labels=dataset.labels, preprocessing=spec, source_width=width,
               source_height=height)
        ended = time.perf_counter()
        return ended - started, ended - decoding

    for index in range(len(candidates)):
        for _ in range(20):
            frame(index)
    totals: list[list[float]] = [[] for _ in candidates]
    decodes: list[list[float]] = [[] for _ in candidates]
    for _ in range(rounds):
        for index in range(len(candidates)):
            for _ in range(10):  # re-warm after the others ran
                frame(index)
            for _ in range(20):
                total, decode = frame(index)
                totals[index].append(total)
                decodes[index].append(decode)
    for candidate, total_s, decode_s in zip(candidates, totals, decodes, strict=True):
        candidate.p50_ms = float(np.median(total_s) * 1000)
        candidate.decode_p50_ms = float(np.median(decode_s) * 1000)

    reference = next(c for c in candidates if c.name == "onnxruntime-fp32")
    print(f"{'runtime-precision':<20} {'route':<30} {'p50 ms':>8} {'decode ms':>9} {'speedup':>8} "
          f"{'mAP50':>7} {'mAP50-95':>8} {'gate':>9}")
    for c in sorted(candidates, key=lambda c: c.p50_ms):
        print(f"{c.name:<20} {c.detail[:30]:<30} {c.p50_ms:>8.3f} {c.decode_p50_ms:>9.3f} "
              f"{reference.p50_ms / c.p50_ms:>8.2f} {c.map_50:>7.4f} {c.map_50_95:>8.4f} "
              f"{'accepted' if c.accepted else 'rejected':>9}")
        for reason in c.gate_reasons:
            print(f"    rejected: {reason}")
    for name, result in fp32_eval.slices.items():
        print(f"fp32 slice {name:<18} images {result.images:>4} mAP50 {result.metrics.map_50:.4f}")
    best = min((c for c in candidates if c.accepted and not c.info_only), key=lambda c: c.p50_ms)
    print(f"bench-detection: best={best.name} speedup_vs_ort_fp32={reference.p50_ms / best.p50_ms:.2f} "
          f"map50={best.map_50:.4f} map50_drop_pp={(reference.map_50 - best.map_50) * 100:.2f} "
          f"decode_share={best.decode_p50_ms / best.p50_ms:.3f}")
    return 0




if __name__ == "__main__":
    raise SystemExit(main())
