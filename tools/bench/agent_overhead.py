"""Agent overhead benchmark: the same model and runtime, bare and inside the agent pipeline.

    python tools/bench/agent_overhead.py --quick

1. Build a MobileNetV2 (width 1.0, 224x224, about 300 M multiply-adds; written out
   here because torchvision is not a dependency) with torch, export it to ONNX,
   and write a 640x480 MJPG video of synthetic scenes. Both are cached.
2. In a child process that imports the agent's whole import graph and nothing else
   (no torch, so its RSS is the agent's), load the model with the agent's ONNX Runtime backend and measure,
   alternating, side by side:
   * bare: a loop of ``backend.run`` over already preprocessed tensors;
   * pipeline: the agent's own :class:`agent.pipeline.Pipeline` on the video file
     (capture thread: grab + decode + preprocess; inference thread: run, results,
     window statistics) with a telemetry thread building a ``TelemetryReport``
     every second and queueing it in the agent's SQLite outbox, as the agent does.
3. Efficiency is pipeline fps / bare fps (medians over short alternating rounds).

Inference uses ``--threads`` intra-op threads (default 1) in both modes, leaving
the second core of a 2-core device to capture and decode. The last line is
``bench-agent: pipeline_fps=<a> bare_fps=<b> efficiency=<a/b> rss_mb=<m>``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

CACHE = REPO / ".edgefleet" / "bench-agent"
INPUT_SIZE = 224


# -- parent: build the model and the video (torch lives only here) -------------
def build_mobilenet_v2(path: Path) -> tuple[Path, float]:
    """Export MobileNetV2-1.0 (random weights: speed does not depend on them). Returns (path, GMACs)."""
    import torch
    from torch import nn

    def conv_bn(inp: int, out: int, kernel: int, stride: int, groups: int = 1, act: bool = True) -> nn.Sequential:
        layers: list[nn.Module] = [nn.Conv2d(inp, out, kernel, stride, kernel // 2, groups=groups, bias=False),
                                   nn.BatchNorm2d(out)]
        if act:
            layers.append(nn.ReLU6(inplace=True))
        return nn.Sequential(*layers)

    class InvertedResidual(nn.Module):
        def __init__(self, inp: int, out: int, stride: int, expand: int) -> None:
            super().__init__()
            hidden = inp * expand
            layers: list[nn.Module] = [] if expand == 1 else [conv_bn(inp, hidden, 1, 1)]
            layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden), conv_bn(hidden, out, 1, 1, act=False)]
            self.block = nn.Sequential(*layers)
            self.residual = stride == 1 and inp == out

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.block(x) if self.residual else self.block(x)

    settings = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1)]
    layers: list[nn.Module] = [conv_bn(3, 32, 3, 2)]
    channels = 32
    for expand, out, repeats, stride in settings:
        for i in range(repeats):
            layers.append(InvertedResidual(channels, out, stride if i == 0 else 1, expand))
            channels = out
    layers += [conv_bn(channels, 1280, 1, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1280, 1000)]
    model = nn.Sequential(*layers).eval()

    macs = 0

    def count(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal macs
        if isinstance(module, nn.Conv2d):
            macs += output.numel() * (module.in_channels // module.groups) * module.kernel_size[0] * module.kernel_size[1]
        elif isinstance(module, nn.Linear):
            macs += module.in_features * module.out_features

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    with torch.no_grad():
        model(torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE))
    for hook in hooks:
        hook.remove()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE),), str(path), dynamo=False,
                          input_names=["input"], output_names=["logits"], opset_version=17)
    return path, macs / 1e9


def prepare(workdir: Path) -> tuple[Path, Path, float]:
    from agent.capture.scenes import write_video

    workdir.mkdir(parents=True, exist_ok=True)
    model, meta = workdir / "mobilenet_v2.onnx", workdir / "mobilenet_v2.json"
    if model.exists() and meta.exists():
        gmacs = float(json.loads(meta.read_text())["gmacs"])
    else:
        _, gmacs = build_mobilenet_v2(model)
        meta.write_text(json.dumps({"gmacs": gmacs}))
    video = workdir / "camera-640x480.avi"
    if not video.exists():
        write_video(str(video), frames=150, fps=30.0, seed=11, width=640, height=480)
    return model, video, gmacs


# -- child: the agent's code only ----------------------------------------------
def child(model_path: Path, video: Path, *, threads: int, seconds: float, rounds: int) -> dict[str, float]:
    import numpy as np
    import psutil

    # The agent's whole import graph (uplink, TUF updater, ...), so rss_mb is the agent's
    # footprint and not just the pipeline's.
    import agent.app  # noqa: F401
    from agent.capture.source import OpenCvSource, limit_opencv_threads, read_frame
    from agent.contract import (
        ModelArtifact,
        PackageManifest,
        PreprocessSpec,
        TelemetryReport,
        describe_file,
        utc_now,
    )
    from agent.infer.engine import load_model
    from agent.pipeline import Pipeline
    from agent.preprocess import preprocess
    from agent.uplink.outbox import Outbox

    # ImageNet-style preprocessing as torchvision does it for MobileNetV2: centre crop,
    # bilinear resize, RGB, mean/std normalisation, NCHW float32.
    spec = PreprocessSpec(width=INPUT_SIZE, height=INPUT_SIZE, resize="center_crop", interpolation="linear",
                          color_order="rgb", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    artifact = ModelArtifact(file=model_path.name, runtime="onnxruntime", precision="fp32")
    manifest = PackageManifest(package_id="bench", model_name="mobilenet_v2", model_version="bench",
                               created_at=utc_now(), hardware_profiles=["bench"],
                               labels=[f"class{i}" for i in range(1000)], preprocessing=spec,
                               artifacts=[artifact], files=[describe_file(model_path)])
    model = load_model(manifest, model_path.parent, threads=threads)
    limit_opencv_threads(1)  # the agent's default (AgentConfig.opencv_threads)

    source = OpenCvSource(str(video), loop=True)
    tensors = []
    for _ in range(16):
        frame = read_frame(source)
        assert frame is not None, f"cannot decode {video}"
        tensors.append(preprocess(frame, spec))
    source.close()

    def bare() -> float:
        for tensor in tensors[:3]:
            model.backend.run(tensor)  # warm
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            model.backend.run(tensors[count % len(tensors)])
            count += 1
        return count / (time.perf_counter() - started)

    def pipeline(workdir: Path) -> float:
        stage = Pipeline("bench", OpenCvSource(str(video), loop=True), target_fps=0.0, policy="every")
        outbox = Outbox(workdir / "outbox.sqlite", max_reports=10_000)
        process = psutil.Process()
        stop = threading.Event()

        def telemetry() -> None:
            while not stop.wait(1.0):
                window = stage.stats.snapshot_and_reset()
                report = TelemetryReport(
                    device_id="bench", model_version=model.version, package_id="bench", runtime="onnxruntime",
                    window_s=window.window_s, frames=window.frames, fps=window.fps,
                    p50_latency_ms=window.p50_latency_ms, p95_latency_ms=window.p95_latency_ms,
                    mean_confidence=window.mean_confidence, class_counts=window.class_counts,
                    cpu_percent=process.cpu_percent(None), memory_mb=process.memory_info().rss / 2**20,
                    report_seq=outbox.next_seq(), pipeline="bench", frame_totals=stage.totals())
                outbox.append("ef/v1/bench/telemetry", report.to_bytes())

        stage.engine.swap(model)
        stage.start()
        reporter = threading.Thread(target=telemetry, daemon=True)
        reporter.start()
        time.sleep(0.5)  # warm: capture thread running, first frames through
        first, started = stage.stats.total_frames, time.perf_counter()
        time.sleep(seconds)
        processed, elapsed = stage.stats.total_frames - first, time.perf_counter() - started
        stop.set()
        stage.stop()
        reporter.join(timeout=5)
        outbox.close()
        return processed / elapsed

    bare_runs, pipeline_runs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(rounds):
            bare_runs.append(bare())
            pipeline_runs.append(pipeline(Path(tmp) / f"round{i}"))
    del np
    rss_mb = psutil.Process().memory_info().rss / 2**20
    return {"bare_fps": statistics.median(bare_runs), "pipeline_fps": statistics.median(pipeline_runs),
            "rss_mb": rss_mb, "bare_runs": bare_runs, "pipeline_runs": pipeline_runs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="4 alternating rounds of 1.5 s per mode")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (both modes)")
    parser.add_argument("--workdir", type=Path, default=CACHE)
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "VIDEO"), help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args(argv)
    # Short alternating rounds: on a shared machine the load drifts, and measuring both
    # modes in the same few seconds, many times, keeps the drift out of the ratio.
    seconds = args.seconds or (1.5 if args.quick else 3.0)
    rounds = args.rounds or (4 if args.quick else 8)
    if args.child:
        result = child(Path(args.child[0]), Path(args.child[1]), threads=args.threads, seconds=seconds,
                       rounds=rounds)
        print(json.dumps(result))
        return 0

    model, video, gmacs = prepare(args.workdir)
    print(f"model: MobileNetV2-1.0 {INPUT_SIZE}x{INPUT_SIZE}, {gmacs * 1000:.0f} M multiply-adds, ONNX Runtime "
          f"CPU fp32, {args.threads} thread(s); video: {video.name} 640x480 MJPG")
    run = subprocess.run(
        [sys.executable, __file__, "--child", str(model), str(video), "--threads", str(args.threads),
         "--seconds", str(seconds), "--rounds", str(rounds)],
        capture_output=True, text=True, cwd=REPO,
    )
    if run.returncode != 0:
        print(run.stderr[-3000:], file=sys.stderr)
        return 1
    result = json.loads(run.stdout.strip().splitlines()[-1])
    print(f"rounds: bare {[round(x, 1) for x in result['bare_runs']]} fps, "
          f"pipeline {[round(x, 1) for x in result['pipeline_runs']]} fps")
    pipeline_fps, bare_fps = result["pipeline_fps"], result["bare_fps"]
    print(f"bench-agent: pipeline_fps={pipeline_fps:.1f} bare_fps={bare_fps:.1f} "
          f"efficiency={pipeline_fps / bare_fps:.3f} rss_mb={result['rss_mb']:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
