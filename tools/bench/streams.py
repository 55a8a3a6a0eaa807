"""Camera-streams benchmark: how many RTSP cameras one agent analyses at 5 fps each.

    python tools/bench/streams.py --quick [--package DIR] [--profile x86-64-avx512-vnni]

1. Model: ``--package DIR`` (a package directory: ``manifest.json`` and its artifacts,
   a classifier or a detector), else the grid detector the pipeline trains on synthetic
   scenes (the detection benchmark's width and input size, trained briefly: speed does
   not depend on how well), mAP-gated, built for the firmware profile (FP32 and INT8 for
   each runtime) and packaged by the pipeline itself (cached under .edgefleet/). Of the
   package's artifacts that load here, the fastest on one frame serves, as the agent's
   runtime selection would pick it; ``--classifier`` serves the profile's classifier
   (random weights, FP32) instead.
2. Cameras: the tests' RTSP harness (GStreamer RTSP server, H.264 640x480 at 15 fps). The
   N cameras are N RTSP sessions, each decoded by its own ffmpeg process as in the agent;
   they share one publisher (shared media: encoded once), so the encoder's CPU does not
   grow with N and eat into what is being measured.
3. In a child process that imports only the agent (no torch), for each N the agent's own
   pipelines run for a while with every camera analysed at 5 fps, either
   * batched: one shared model, micro-batches across cameras (the profile's ``max_batch``
     and ``batch_deadline_ms``), or
   * per camera: one pipeline, one engine and one loaded model per camera, frame by frame.
   N holds when every camera gets at least 95% of 5 fps and the capture-to-result p95 over
   all frames is under 250 ms. N doubles until it fails, then a bisection finds the largest.
4. Bare runtime: the same backend on pre-decoded, pre-resized tensors at the batch size the
   batched agent ran at its largest N. Efficiency = frames analysed per second by the whole
   agent there / bare frames per second.

Where the time goes (decode in ffmpeg, preprocessing, inference, post-processing) is
measured per analysed frame at the batched agent's largest N and printed before the last
line, which is
``bench-streams: streams=<n> per_camera_streams=<m> batched_vs_per_camera=<n/m> latency_p95_ms=<y> efficiency=<e>``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

CACHE = REPO / ".edgefleet" / "bench-streams"
ANALYSED_FPS = 5.0
# A camera holds when it gets this share of ANALYSED_FPS...
MIN_FPS_SHARE = 0.95
# ...and the capture-to-result p95 over all frames stays under this.
MAX_P95_MS = 250.0
LABELS = ["circle", "square", "triangle", "cross"]
# The detection benchmark's detector (tools/bench/detection.py): 160 px input, width 64.
DETECTOR_WIDTH = 64
DETECTOR_EPOCHS = 8


# -- parent: the model package (torch lives only here) -------------------------------
def build_classifier_package(profile_name: str) -> Path:
    """The classifier the pipeline trains for ``profile_name``, exported and packaged (cached)."""
    from agent.contract import MANIFEST_FILE, ModelArtifact, PackageManifest, describe_file, utc_now
    from agent.profiles import PROFILES_DIR, load_profile

    directory = CACHE / f"classifier-{profile_name}"
    if (directory / MANIFEST_FILE).exists():
        return directory
    import torch

    from cloud.pipeline.train.model import MobileNetV2
    from cloud.pipeline.train.trainer import TrainConfig, export_onnx, spec_for_input_size

    profile = load_profile(PROFILES_DIR / f"{profile_name}.yaml")
    config = TrainConfig.for_profile(profile)
    spec = spec_for_input_size(profile.input_size)
    torch.manual_seed(0)
    model = MobileNetV2(len(LABELS), config.width_multiplier, config.architecture)
    directory.mkdir(parents=True, exist_ok=True)
    onnx_path = export_onnx(model, spec, directory / "model.onnx")
    manifest = PackageManifest(
        package_id=f"bench-classifier-{profile_name}", model_name="bench-classifier", model_version="1",
        created_at=utc_now(), hardware_profiles=[profile_name], labels=LABELS, preprocessing=spec,
        artifacts=[ModelArtifact(file=onnx_path.name, runtime="onnxruntime", precision="fp32")],
        files=[describe_file(onnx_path)])
    (directory / MANIFEST_FILE).write_bytes(manifest.to_bytes())
    return directory


def build_detector_package(profile_name: str) -> Path:
    """The pipeline's grid detector for ``profile_name``: trained, gated, built and packaged (cached)."""
    directory = CACHE / f"detector-{profile_name}"
    marker = directory / "package-dir"
    if marker.exists() and Path(marker.read_text()).is_dir():
        return Path(marker.read_text())
    from cloud.core.db import make_engine, migrate
    from cloud.pipeline.data.synth_detection import write_detection_dataset
    from cloud.pipeline.quickstart import detect_train_and_package
    from cloud.pipeline.train.detector import DetectorConfig

    directory.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{directory / 'pipeline.db'}"
    migrate(url)
    data_root = directory / "scenes"
    if not (data_root / "metadata.csv").exists():
        write_detection_dataset(data_root, images=600, seed=0)
    print(f"training the grid detector (width {DETECTOR_WIDTH}) and building it for {profile_name}", file=sys.stderr)
    result = detect_train_and_package(
        make_engine(url), data_root=data_root, models_dir=directory / "models", packages_dir=directory / "packages",
        model_name="bench-detector", hardware_profiles=[profile_name],
        config=DetectorConfig(epochs=DETECTOR_EPOCHS, width=DETECTOR_WIDTH, seed=0))
    package = directory / "packages" / result.package_id
    marker.write_text(str(package))
    return package


def parent(args: argparse.Namespace) -> int:
    package = (Path(args.package) if args.package
               else build_classifier_package(args.profile) if args.classifier
               else build_detector_package(args.profile))
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "result.json"
        command = [sys.executable, __file__, "--child", "--package", str(package), "--profile", args.profile,
                   "--out", str(out), "--threads", str(args.threads), "--workers", str(args.workers),
                   "--max-streams", str(args.max_streams), "--measure-s", str(args.measure_s),
                   "--warmup-s", str(args.warmup_s)]
        completed = subprocess.run(command, check=False)
        if completed.returncode != 0 or not out.exists():
            print("bench-streams: the measuring child failed", file=sys.stderr)
            return 1
        result = json.loads(out.read_text())
    for line in result["report"]:
        print(line)
    n, m = result["streams"], result["per_camera_streams"]
    ratio = n / m if m else float(n)
    print(f"bench-streams: streams={n} per_camera_streams={m} batched_vs_per_camera={ratio:.2f} "
          f"latency_p95_ms={result['latency_p95_ms']:.1f} efficiency={result['efficiency']:.2f}")
    return 0


# -- child: the agent's code only ----------------------------------------------------
def child(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    import psutil

    import agent.pipeline as pipeline_module
    from agent.capture.source import limit_opencv_threads, open_source
    from agent.capture.stream import StreamSettings
    from agent.contract import MANIFEST_FILE, PackageManifest
    from agent.infer.batcher import BatchSettings
    from agent.infer.engine import FrameResult, InferenceEngine, LoadedModel, load_model
    from agent.pipeline import Pipeline
    from agent.preprocess import preprocess
    from agent.profiles import PROFILES_DIR, load_profile
    from tests.support.rtsp import RtspServer

    limit_opencv_threads(1)
    package = Path(args.package)
    manifest = PackageManifest.from_bytes((package / MANIFEST_FILE).read_bytes())
    profile = load_profile(PROFILES_DIR / f"{args.profile}.yaml")
    batching = BatchSettings(max_batch=profile.max_batch, deadline_s=profile.batch_deadline_ms / 1000.0,
                             workers=args.workers or profile.batch_workers)
    spec = manifest.preprocessing
    dtype = np.float32 if spec.dtype == "float32" else np.uint8 if spec.dtype == "uint8" else np.int8

    def time_one(model: LoadedModel, runs: int = 10) -> float:
        tensor = np.zeros(spec.input_shape(1), dtype=dtype)
        started = time.perf_counter()
        for _ in range(runs):
            model.backend.run(tensor)
        return (time.perf_counter() - started) / runs

    # The fastest INT8 artifact that loads (the fastest of any precision when none does), as
    # the agent's runtime selection would choose among the profile's quantized builds.
    timed: list[tuple[float, str]] = []
    for artifact in manifest.artifacts:
        try:
            candidate = load_model(manifest, package, threads=args.threads, artifact_file=artifact.file)
        except Exception as exc:  # a runtime missing here only removes a candidate
            print(f"skipping {artifact.file}: {exc}", file=sys.stderr)
            continue
        if candidate.artifact.file == artifact.file:
            timed.append((time_one(candidate), artifact.file))
    if not timed:
        raise SystemExit("no artifact of the package loads here")
    precision = {artifact.file: artifact.precision for artifact in manifest.artifacts}
    int8 = [entry for entry in timed if precision[entry[1]] == "int8"]
    artifact_file = min(int8 or timed)[1]

    class TimedBackend:
        """The loaded backend, counting its calls, frames and time (inference proper)."""

        def __init__(self, inner: Any) -> None:
            self.inner, self.runtime, self.device = inner, inner.runtime, inner.device
            self.concurrent_runs = getattr(inner, "concurrent_runs", False)
            self.seconds, self.frames, self.calls = 0.0, 0, 0
            self.lock = threading.Lock()

        def run(self, tensor: Any) -> Any:
            started = time.perf_counter()
            output = self.inner.run(tensor)
            with self.lock:
                self.seconds += time.perf_counter() - started
                self.frames += int(tensor.shape[0])
                self.calls += 1
            return output

    def load() -> LoadedModel:
        loaded = load_model(manifest, package, threads=args.threads, artifact_file=artifact_file)
        return LoadedModel(manifest=loaded.manifest, artifact=loaded.artifact, backend=TimedBackend(loaded.backend))

    # Preprocessing (crop/resize/normalise) runs on the capture threads: time it there.
    preprocess_time = {"seconds": 0.0, "frames": 0}
    preprocess_lock = threading.Lock()

    def timed_preprocess(frame: Any, frame_spec: Any) -> Any:
        started = time.perf_counter()
        tensor = preprocess(frame, frame_spec)
        with preprocess_lock:
            preprocess_time["seconds"] += time.perf_counter() - started
            preprocess_time["frames"] += 1
        return tensor

    pipeline_module.preprocess = timed_preprocess  # type: ignore[attr-defined]

    class TimedEngine(InferenceEngine):
        """The engine, timing each batch from frames taken to results emitted."""

        busy_s = 0.0
        busy_lock = threading.Lock()

        def _process_batch(self, batch: Any) -> None:
            started = time.perf_counter()
            super()._process_batch(batch)
            with self.busy_lock:
                self.busy_s += time.perf_counter() - started

    class Recorder:
        def __init__(self) -> None:
            self.lock = threading.Lock()
            self.recording = False
            self.latencies: list[float] = []
            self.per_camera: dict[str, int] = {}
            self.answered: set[str] = set()

        def emit(self, result: FrameResult) -> None:
            with self.lock:
                self.answered.add(result.pipeline)
                if self.recording and result.capture_to_result_ms is not None:
                    self.latencies.append(result.capture_to_result_ms)
                    self.per_camera[result.pipeline] = self.per_camera.get(result.pipeline, 0) + 1

    me = psutil.Process()

    def decoders_cpu_s() -> float:
        total = 0.0
        for process in me.children(recursive=True):
            try:
                times = process.cpu_times()
                total += times.user + times.system
            except psutil.NoSuchProcess:
                continue
        return total

    def trial(n: int, mode: str) -> dict[str, Any]:
        # A fresh publisher for every trial: one whose clients all vanished at once may not
        # take new ones (that is the harness failing, not the agent).
        with RtspServer(width=640, height=480) as server:
            outcome = trial_on(n, mode, server.url())
        if outcome["analysed_fps"] == 0.0:
            # The publisher went away under the agent (seen once in a while with the GStreamer
            # harness): that measures the harness, so the trial runs again on a new one.
            print(f"no frame at all from {n} cameras: retrying the trial on a new publisher", file=sys.stderr)
            with RtspServer(width=640, height=480) as server:
                outcome = trial_on(n, mode, server.url())
        print(json.dumps(outcome), file=sys.stderr, flush=True)
        return outcome

    def trial_on(n: int, mode: str, url: str) -> dict[str, Any]:
        recorder = Recorder()
        engines: list[TimedEngine] = []
        if mode == "batched":
            engines.append(TimedEngine(name="shared", batching=batching))
            engines[0].swap(load())
        pipelines = []
        for index in range(n):
            if mode == "per_camera":
                engines.append(TimedEngine(name=f"cam{index}", batching=BatchSettings(max_batch=1, deadline_s=0.0)))
                engines[-1].swap(load())
            # The agent hands each camera's analysed rate to its decoder (agent.config), so do we.
            source = open_source(url, name=f"cam{index}",
                                 stream=StreamSettings(open_timeout_s=20.0, analysed_fps=ANALYSED_FPS))
            pipelines.append(Pipeline(f"cam{index}", source, target_fps=ANALYSED_FPS, sinks=[recorder],
                                      engine=engines[-1]))
        for engine in engines:
            engine.start()
        for pipeline in pipelines:
            pipeline.start()
        deadline = time.monotonic() + 30.0
        while len(recorder.answered) < n and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(args.warmup_s)
        backends = [engine.model.backend for engine in engines if engine.model is not None]
        start = {"decode": decoders_cpu_s(), "busy": sum(e.busy_s for e in engines),
                 "infer": sum(b.seconds for b in backends), "frames": sum(b.frames for b in backends),  # type: ignore[attr-defined]
                 "calls": sum(b.calls for b in backends),  # type: ignore[attr-defined]
                 "pre_s": preprocess_time["seconds"], "pre_n": preprocess_time["frames"],
                 "cpu": sum(me.cpu_times()[:2])}
        with recorder.lock:
            recorder.recording = True
        started = time.monotonic()
        time.sleep(args.measure_s)
        with recorder.lock:
            recorder.recording = False
            latencies, per_camera = list(recorder.latencies), dict(recorder.per_camera)
        elapsed = time.monotonic() - started
        frames = sum(b.frames for b in backends) - start["frames"]  # type: ignore[attr-defined]
        calls = sum(b.calls for b in backends) - start["calls"]  # type: ignore[attr-defined]
        decoded = 15.0 * n * elapsed
        breakdown = {
            "decode_ms_per_decoded_frame": (decoders_cpu_s() - start["decode"]) * 1000 / max(decoded, 1),
            "preprocess_ms": (preprocess_time["seconds"] - start["pre_s"]) * 1000
            / max(preprocess_time["frames"] - start["pre_n"], 1),
            "inference_ms": (sum(b.seconds for b in backends) - start["infer"]) * 1000 / max(frames, 1),  # type: ignore[attr-defined]
            "postprocess_ms": ((sum(e.busy_s for e in engines) - start["busy"])
                               - (sum(b.seconds for b in backends) - start["infer"])) * 1000 / max(frames, 1),  # type: ignore[attr-defined]
            "agent_process_cpu_percent": (sum(me.cpu_times()[:2]) - start["cpu"]) * 100 / elapsed,
            # The agent's CPU (its process and its decoders) per frame analysed: the cost of a
            # frame, whatever share of a busy machine the agent was given.
            "cpu_ms_per_analysed_frame": ((sum(me.cpu_times()[:2]) - start["cpu"]) + (decoders_cpu_s() - start["decode"]))
            * 1000 / max(frames, 1),
        }
        for pipeline in pipelines:
            pipeline.stop(drain_s=2.0)
        for engine in engines:
            engine.stop()
        fps = [per_camera.get(f"cam{index}", 0) / elapsed for index in range(n)]
        p95 = float(np.percentile(latencies, 95)) if latencies else float("inf")
        holds = min(fps) >= ANALYSED_FPS * MIN_FPS_SHARE and p95 < MAX_P95_MS
        outcome = {"n": n, "mode": mode, "holds": holds, "min_fps": round(min(fps), 2), "p95_ms": round(p95, 1),
                   "analysed_fps": round(sum(fps), 2), "mean_batch": round(frames / max(calls, 1), 2),
                   "breakdown": {k: round(v, 2) for k, v in breakdown.items()}}
        return outcome

    def search(found: dict[str, Any]) -> Generator[int, dict[str, Any], None]:
        """Double N until it fails, then bisect; ``found["best"]`` is the largest N's trial that held."""
        n, failed = 1, None
        while n <= args.max_streams:
            outcome = yield n
            if not outcome["holds"]:
                failed = n
                break
            found["best"], n = outcome, n * 2
        low = found["best"]["n"] if found.get("best") else 0
        high = failed if failed is not None else args.max_streams + 1
        while high - low > 1:
            middle = (low + high) // 2
            outcome = yield middle
            if outcome["holds"]:
                found["best"], low = outcome, middle
            else:
                high = middle

    bare_model = load().backend
    frame = (np.random.default_rng(0).integers(0, 255, size=(480, 640, 3))).astype(np.uint8)

    def bare_runtime(batch: int, seconds: float) -> float:
        tensor = np.concatenate([preprocess(frame, spec)] * batch)
        bare_model.run(tensor)
        runs = [0] * batching.workers

        def caller(index: int) -> None:
            until = time.perf_counter() + seconds
            while time.perf_counter() < until:
                bare_model.run(tensor)
                runs[index] += 1

        started = time.perf_counter()
        callers = [threading.Thread(target=caller, args=(i,)) for i in range(batching.workers)]
        for thread in callers:
            thread.start()
        for thread in callers:
            thread.join()
        return sum(runs) * batch / (time.perf_counter() - started)

    bare_before = {batch: bare_runtime(batch, 1.5) for batch in range(1, batching.max_batch + 1)}

    # The two searches take turns, trial by trial, so both see the same background load.
    results: dict[str, dict[str, Any]] = {"batched": {}, "per_camera": {}}
    searches = {mode: search(results[mode]) for mode in results}
    pending = {mode: next(searches[mode]) for mode in results}
    while pending:
        for mode in list(pending):
            try:
                pending[mode] = searches[mode].send(trial(pending[mode], mode))
            except StopIteration:
                del pending[mode]
    batched, per_camera = results["batched"].get("best"), results["per_camera"].get("best")

    # The bare runtime at the batched agent's batch size, on pre-decoded, pre-resized frames,
    # with as many concurrent callers as the shared model has workers. The machine's load
    # drifts: it is measured before the search (every batch size) and after it (the size
    # used), and the faster of the two counts, so efficiency errs low rather than high.
    batch = max(1, round(batched["mean_batch"])) if batched else 1
    bare_fps = max(bare_before.get(batch, 0.0), bare_runtime(batch, max(3.0, args.measure_s / 2)))
    efficiency = (batched["analysed_fps"] / bare_fps) if batched else 0.0
    report = [f"model: {manifest.model_name} {manifest.model_version} ({artifact_file}, "
              f"{spec.width}x{spec.height}), {args.threads} inference thread(s), profile {args.profile} "
              f"(max_batch {batching.max_batch}, deadline {batching.deadline_s * 1000:.0f} ms, "
              f"{batching.workers} worker(s) on the shared model; one engine thread per camera otherwise)"]
    for name, outcome in (("batched", batched), ("per camera", per_camera)):
        if outcome is None:
            report.append(f"{name}: not even one camera held 5 fps with p95 < {MAX_P95_MS:.0f} ms")
            continue
        report.append(f"{name}: {outcome['n']} cameras at >= {outcome['min_fps']} fps each, "
                      f"{outcome['analysed_fps']} frames/s analysed, capture-to-result p95 {outcome['p95_ms']} ms, "
                      f"mean batch {outcome['mean_batch']}, {1 if name == 'batched' else outcome['n']} model(s) loaded; per frame: {json.dumps(outcome['breakdown'])}")
    report.append(f"bare runtime at batch {batch}, {batching.workers} concurrent caller(s): {bare_fps:.1f} frames/s")
    # What batching buys the runtime itself: frames/s at each batch size, same callers, before the search.
    report.append("bare runtime frames/s by batch size: "
                  + ", ".join(f"{size}: {fps:.1f}" for size, fps in sorted(bare_before.items())))
    return {"streams": batched["n"] if batched else 0, "per_camera_streams": per_camera["n"] if per_camera else 0,
            "latency_p95_ms": batched["p95_ms"] if batched else 0.0, "efficiency": efficiency, "report": report}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short trials, at most 48 cameras (a few minutes)")
    parser.add_argument("--package", help="a package directory to serve (default: the pipeline's detector)")
    parser.add_argument("--classifier", action="store_true", help="serve the profile's classifier instead")
    parser.add_argument("--profile", default="x86-64-avx512-vnni")
    parser.add_argument("--threads", type=int, default=1, help="inference threads (the agent's default: 1)")
    parser.add_argument("--max-streams", type=int, default=0)
    parser.add_argument("--workers", type=int, default=0, help="threads on the shared model (default: the profile's)")
    parser.add_argument("--measure-s", type=float, default=0.0)
    parser.add_argument("--warmup-s", type=float, default=0.0)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        Path(args.out).write_text(json.dumps(child(args)))
        return 0
    args.max_streams = args.max_streams or (48 if args.quick else 64)
    args.measure_s = args.measure_s or (5.0 if args.quick else 20.0)
    args.warmup_s = args.warmup_s or (2.0 if args.quick else 5.0)
    return parent(args)


if __name__ == "__main__":
    sys.exit(main())
