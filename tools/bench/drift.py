"""Drift detection benchmark: false alarms on clean streams, delay and recall on shifted ones.

    python tools/bench/drift.py --quick

1. Train a small model on synthetic scenes (the project's trainer) and build its
   drift reference from fresh clean images (cloud.monitor.reference, which also
   calibrates the CUSUM constants on its own held-out half — no benchmark stream is
   used for calibration).
2. Simulate subsampled camera streams: every kept frame is a new scene, except that
   with probability ``--repeat`` it repeats the previous one (scenes last longer than
   the subsampling interval on a real camera, so kept frames are correlated).
3. Clean streams, and shifted streams whose shift starts at a known window: brightness,
   blur, noise, occlusion and a new class, severities 1 to 5.
4. Every window goes through the device code (agent.telemetry.drift.DriftWindow →
   DriftReport bytes) and the control plane's test (cloud.monitor.stats).

The last line is ``bench-drift: false_alarms_per_1000=<x> median_delay_windows=<y>
detected=<k>/<n> bytes_per_window=<b>``; n counts shifted streams of severity >= 3,
the delay is in windows after the first shifted window (0 = alarm on that window).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from agent.capture.scenes import SCENE_CLASSES, SceneConditions, render_scene
from agent.contract import DriftReport
from agent.contract.drift import DriftReference, decode_histograms
from agent.telemetry.drift import DriftWindow, frame_features, model_view
from cloud.monitor.reference import build_reference, run_logits, softmax
from cloud.monitor.stats import Cusum, evaluate_window

LIGHTING = (0.7, 1.0, 1.2)  # the training generator's dim / normal / bright
BASE_NOISE = 3.0
SIZE = 64
Image = npt.NDArray[np.uint8]


def render_new_class(rng: np.random.Generator) -> Image:
    """A class the model never saw: a five-pointed star on the usual background."""
    image = render_scene("circle", rng, size=SIZE, conditions=SceneConditions(noise_std=BASE_NOISE))
    background = np.median(image[:4, :4].reshape(-1, 3), axis=0)
    image[:] = background.astype(np.uint8)
    centre, outer, inner = SIZE / 2, SIZE * 0.32, SIZE * 0.13
    angle0 = rng.uniform(0, 2 * math.pi)
    points = [(centre + (outer if i % 2 == 0 else inner) * math.cos(angle0 + i * math.pi / 5),
               centre + (outer if i % 2 == 0 else inner) * math.sin(angle0 + i * math.pi / 5)) for i in range(10)]
    colour = tuple(float(c) for c in rng.uniform(150, 255, size=3))
    cv2.fillPoly(image, [np.asarray(points, dtype=np.int32)], colour, lineType=cv2.LINE_AA)
    return image


def scene(rng: np.random.Generator, conditions: SceneConditions | None = None) -> Image:
    label = SCENE_CLASSES[int(rng.integers(len(SCENE_CLASSES)))]
    light = LIGHTING[int(rng.integers(len(LIGHTING)))]
    base = conditions or SceneConditions(noise_std=BASE_NOISE)
    return render_scene(label, rng, size=SIZE, conditions=SceneConditions(
        brightness=light * base.brightness, blur_sigma=base.blur_sigma, noise_std=base.noise_std))


Shift = Callable[[np.random.Generator], Image]


def shift_for(kind: str, severity: int) -> Shift:
    if kind == "brightness":
        conditions = SceneConditions(brightness=1.0 - 0.12 * severity, noise_std=BASE_NOISE)
        return lambda rng: scene(rng, conditions)
    if kind == "blur":
        conditions = SceneConditions(blur_sigma=0.4 * severity, noise_std=BASE_NOISE)
        return lambda rng: scene(rng, conditions)
    if kind == "noise":
        conditions = SceneConditions(noise_std=BASE_NOISE + 2.5 * severity)
        return lambda rng: scene(rng, conditions)
    if kind == "occlusion":
        def occluded(rng: np.random.Generator) -> Image:
            image = scene(rng)
            side = round(SIZE * math.sqrt(0.07 * severity))
            y0, x0 = (int(v) for v in rng.integers(0, SIZE - side + 1, size=2))
            image[y0 : y0 + side, x0 : x0 + side] = 0
            return image
        return occluded
    if kind == "new_class":
        return lambda rng: render_new_class(rng) if rng.random() < 0.15 * severity else scene(rng)
    raise ValueError(kind)


def run_stream(reference: DriftReference, onnx_path: Path, spec, rng: np.random.Generator,
               windows: int, frames: int, repeat: float, shift_at: int | None, shift: Shift | None
               ) -> tuple[list[str | None], list[int]]:
    """Events per window ("open"/"clear"/None) and report sizes in bytes."""
    window = DriftWindow(reference, device_id="bench-device", model_version="bench", package_id="bench-pkg",
                         max_frames=frames)
    cusum = Cusum(reference.calibration)
    events: list[str | None] = []
    sizes: list[int] = []
    previous: Image | None = None
    for index in range(windows):
        shifted = shift is not None and shift_at is not None and index >= shift_at
        images = []
        for _ in range(frames):
            if previous is not None and rng.random() < repeat:
                images.append(previous)
                continue
            previous = shift(rng) if shifted and shift is not None else scene(rng)
            images.append(previous)
        logits = run_logits(onnx_path, images, spec)
        probabilities = softmax(logits)
        for image, row_logits, row_p in zip(images, logits, probabilities, strict=True):
            window.add(frame_features(model_view(image, spec), row_logits, row_p, reference), float(index))
        report = window.close()
        assert report is not None
        raw = report.to_bytes()
        sizes.append(len(raw))
        parsed = DriftReport.model_validate_json(raw)  # what the control plane receives
        counts = decode_histograms(parsed.histograms, len(parsed.features))
        result = evaluate_window(reference, counts, parsed.class_counts, means=parsed.means)
        events.append(cusum.step(result.score))
    return events, sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer streams and a smaller model (a few minutes)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--frames", type=int, default=100, help="frames per window")
    parser.add_argument("--repeat", type=float, default=0.33, help="probability a kept frame repeats the previous")
    args = parser.parse_args()

    from cloud.pipeline.data.dataset import scan_imagefolder
    from cloud.pipeline.data.synth import write_synthetic_dataset
    from cloud.pipeline.train.trainer import DEFAULT_SPEC, TrainConfig, export_onnx, train

    started = time.monotonic()
    quick = args.quick
    clean_streams, clean_windows = (12, 60) if quick else (30, 100)
    repeats, pre, post = (1, 12, 6) if quick else (3, 20, 10)
    kinds = ("brightness", "blur", "noise", "occlusion", "new_class")
    with tempfile.TemporaryDirectory(prefix="bench-drift-") as tmp:
        workdir = Path(tmp)
        data = write_synthetic_dataset(workdir / "data", images_per_class=120 if quick else 300, seed=args.seed)
        dataset = scan_imagefolder(data)
        trained = train(dataset, TrainConfig(epochs=5 if quick else 10, seed=args.seed), DEFAULT_SPEC,
                        show_progress=False)
        onnx_path = export_onnx(trained.model, DEFAULT_SPEC, workdir / "model.onnx")
        rng = np.random.default_rng(args.seed + 100)
        reference_images = [scene(rng) for _ in range(1200 if quick else 3000)]
        reference = build_reference(reference_images, run_logits(onnx_path, reference_images, DEFAULT_SPEC),
                                    dataset.labels, DEFAULT_SPEC, window_frames=args.frames,
                                    calibration_windows=300 if quick else 1000, seed=args.seed)
        print(f"reference: {reference.reference_size} frames, k={reference.calibration.k:.2f} "
              f"h={reference.calibration.h:.2f} (clean calibration alarms {reference.calibration.clean_alarms}/"
              f"{reference.calibration.clean_windows}), trained in {time.monotonic() - started:.0f}s", flush=True)

        false_alarms = 0
        clean_total = 0
        sizes: list[int] = []
        for stream in range(clean_streams):
            events, stream_sizes = run_stream(reference, onnx_path, DEFAULT_SPEC, np.random.default_rng(1000 + stream),
                                              clean_windows, args.frames, args.repeat, None, None)
            false_alarms += events.count("open")
            clean_total += len(events)
            sizes += stream_sizes
        print(f"clean: {false_alarms} alarms in {clean_total} windows", flush=True)

        delays: list[int] = []
        detected = counted = 0
        for kind in kinds:
            for severity in range(1, 6):
                for repeat_index in range(repeats):
                    seed = 5000 + 100 * kinds.index(kind) + 10 * severity + repeat_index
                    events, stream_sizes = run_stream(reference, onnx_path, DEFAULT_SPEC, np.random.default_rng(seed),
                                                      pre + post, args.frames, args.repeat, pre,
                                                      shift_for(kind, severity))
                    sizes += stream_sizes
                    false_alarms += events[:pre].count("open")
                    clean_total += pre
                    opened = [i for i, e in enumerate(events) if e == "open" and i >= pre]
                    still_open = any(e == "open" for e in events[:pre]) and "clear" not in events[:pre]
                    delay = 0 if still_open else (opened[0] - pre if opened else None)
                    print(f"{kind:>10} severity {severity}: "
                          f"{'missed' if delay is None else f'alarm after {delay} window(s)'}", flush=True)
                    if severity >= 3:
                        counted += 1
                        if delay is not None:
                            detected += 1
                            delays.append(delay)
    far = 1000.0 * false_alarms / max(clean_total, 1)
    median_delay = float(np.median(delays)) if delays else float("nan")
    print(f"{clean_total} clean windows, {len(sizes)} windows in all, {time.monotonic() - started:.0f}s")
    print(f"bench-drift: false_alarms_per_1000={far:.2f} median_delay_windows={median_delay:g} "
          f"detected={detected}/{counted} bytes_per_window={round(float(np.mean(sizes)))}")


if __name__ == "__main__":
    main()
