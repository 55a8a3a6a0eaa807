"""Device-side drift windows: per-frame statistics, subsampling, window closing and size."""

from __future__ import annotations

import numpy as np
import pytest

from agent.capture.scenes import SceneConditions, render_scene
from agent.contract import DriftReport, ModelArtifact, PackageFile, PackageManifest, PreprocessSpec, utc_now
from agent.contract.drift import (
    IMAGE_FEATURES,
    OUTPUT_FEATURES,
    DriftReference,
    FeatureReference,
    decode_histograms,
    encode_histograms,
)
from agent.telemetry.drift import (
    DeviceMonitor,
    DriftWindow,
    FrameFeatures,
    FrameSubsampler,
    image_stats,
    model_view,
    output_stats,
)
from agent.telemetry.samples import BudgetLimits, RandomSampler, SampleBudget, SampleCollector

SPEC = PreprocessSpec(width=64, height=64, resize="center_crop")
NAMES = [*IMAGE_FEATURES, *OUTPUT_FEATURES, "proj_0", "proj_1", "proj_2", "proj_3"]


def reference(features: int = len(NAMES)) -> DriftReference:
    return DriftReference(
        labels=["circle", "cross", "square", "triangle"],
        features=[FeatureReference(name=NAMES[i], edges=list(np.linspace(0, 1, 31)), counts=[10] * 32, mean=0.5,
                                   std=0.3) for i in range(features)],
        projection_mean=[0.0] * 4, projection=np.eye(4).tolist(), reference_size=320)


def scene(seed: int, **conditions: float) -> np.ndarray:
    return render_scene("square", np.random.default_rng(seed), size=64,
                        conditions=SceneConditions(**{"noise_std": 3.0, **conditions}))


def test_image_stats_see_darkness_blur_and_noise() -> None:
    base = image_stats(scene(1))
    dark = image_stats(scene(1, brightness=0.5))
    blurred = image_stats(scene(1, blur_sigma=2.0))
    noisy = image_stats(scene(1, noise_std=15.0))
    luma, spread, _, sharpness, noise, _ = range(6)
    assert dark[luma] < 0.6 * base[luma] and dark[spread] < base[spread]
    assert blurred[sharpness] < base[sharpness] - 0.5
    assert noisy[noise] > 2 * base[noise] and 2.0 < base[noise] < 8.0  # ~3 plus a little edge leakage
    white = np.full((16, 16, 3), 255, dtype=np.uint8)
    assert image_stats(white)[5] == 1.0
    with pytest.raises(ValueError):
        image_stats(np.zeros((2, 2, 3), dtype=np.uint8))


def test_output_stats() -> None:
    values, index = output_stats(np.asarray([0.1, 0.7, 0.15, 0.05]))
    assert index == 1 and values[0] == pytest.approx(0.7) and values[2] == pytest.approx(0.55)
    assert values[1] > 0
    assert output_stats(np.asarray([0.25] * 4))[0][1] == pytest.approx(np.log(4))


def test_model_view_is_the_crop_the_model_sees() -> None:
    frame = np.zeros((480, 640, 3), dtype=np.uint8)
    frame[:, 80:560] = 200  # the centred square; the letterbox bars are black
    view = model_view(frame, SPEC)
    assert view.shape == (64, 64, 3) and view.min() == 200


def test_subsampler_keeps_one_per_interval_or_a_scene_change() -> None:
    sampler = FrameSubsampler(interval_s=1.0, scene_change=20.0, min_gap_s=0.2)
    same, other = scene(1), scene(2, brightness=0.4)
    kept = [sampler.accept(same, t / 10) for t in range(30)]  # 10 fps, a static scene
    assert kept.count(True) == 3
    assert sampler.accept(other, 2.05) is False  # a new scene, but too soon after the last kept frame
    assert sampler.accept(other, 2.25) is True  # the scene changed: kept before the interval
    assert sampler.accept(other, 2.5) is False  # same scene again, interval not over


def test_window_closes_by_count_and_by_time_and_stays_small() -> None:
    window = DriftWindow(reference(), device_id="cam-1", model_version="v1", package_id="p1", max_frames=300,
                         max_window_s=60.0)
    rng = np.random.default_rng(0)
    reports = []
    for step in range(650):
        window.add(FrameFeatures(values=rng.random(len(NAMES)), class_index=int(rng.integers(4))), step * 0.01)
        report = window.close_if_due(step * 0.01)
        if report is not None:
            reports.append(report)
    assert [r.frames for r in reports] == [300, 300] and window.frames == 50
    assert window.close_if_due(6.5) is None
    late = window.close_if_due(70.0)  # by time, with the 50 frames it has
    assert late is not None and late.frames == 50 and late.window_seq == 2
    for report in [*reports, late]:
        raw = report.to_bytes()
        assert len(raw) <= 4096, len(raw)
        parsed = DriftReport.model_validate_json(raw)
        counts = decode_histograms(parsed.histograms, len(parsed.features))
        assert (counts.sum(axis=1) == parsed.frames).all() and sum(parsed.class_counts) == parsed.frames
    assert window.close() is None


def test_histograms_saturate_at_uint16() -> None:
    counts = np.zeros((2, 32), dtype=np.int64)
    counts[0, 0] = 70_000
    assert decode_histograms(encode_histograms(counts), 2)[0, 0] == 65_535
    with pytest.raises(ValueError):
        decode_histograms(encode_histograms(counts), 3)


def test_device_monitor_windows_and_samples(tmp_path) -> None:
    manifest = PackageManifest(
        package_id="p1", model_name="m", model_version="v1", created_at=utc_now(), hardware_profiles=["x"],
        labels=["circle", "cross", "square", "triangle"], preprocessing=SPEC,
        artifacts=[ModelArtifact(file="m.onnx", runtime="onnxruntime", precision="fp32")],
        files=[PackageFile(name="m.onnx", sha256="0" * 64, size_bytes=1)])
    collector = SampleCollector([RandomSampler(1.0, seed=0)], SampleBudget(BudgetLimits(per_minute_count=3)))
    monitor = DeviceMonitor(device_id="cam-1", manifest=manifest, reference=reference(), collector=collector,
                            subsampler=FrameSubsampler(interval_s=1.0), window_frames=5)
    reports, samples = [], []
    rng = np.random.default_rng(0)
    for step in range(100):  # 10 fps for 10 s: 10 subsampled frames, two windows
        frame = scene(step // 10)
        observed = monitor.observe(frame, rng.normal(size=4), now_s=step / 10)
        reports += observed.reports
        samples += observed.samples
    assert [r.frames for r in reports] == [5, 5]
    assert reports[0].frames_seen > reports[0].frames
    assert 1 <= len(samples) <= 3  # one minute's budget
    assert set(samples[0].features) == set(NAMES)
    plain = DeviceMonitor(device_id="cam-1", manifest=manifest, reference=None, collector=None)
    assert plain.observe(scene(0), np.zeros(4), now_s=0.0).reports == []


def test_agent_monitoring_follows_the_served_package(tmp_path) -> None:
    import hashlib
    from dataclasses import dataclass

    from agent.telemetry.drift import AgentMonitoring, MonitoringConfig

    ref = reference()
    raw = ref.to_bytes()

    def package(package_id: str, reference_bytes: bytes) -> PackageManifest:
        directory = tmp_path / package_id
        directory.mkdir()
        (directory / "drift_reference.json").write_bytes(reference_bytes)
        return PackageManifest(
            package_id=package_id, model_name="m", model_version=package_id, created_at=utc_now(),
            hardware_profiles=["x"], labels=ref.labels, preprocessing=SPEC,
            artifacts=[ModelArtifact(file="m.onnx", runtime="onnxruntime", precision="fp32")],
            files=[PackageFile(name="m.onnx", sha256="0" * 64, size_bytes=1),
                   PackageFile(name="drift_reference.json", sha256=hashlib.sha256(raw).hexdigest(),
                               size_bytes=len(raw))],
            drift_reference_file="drift_reference.json")

    @dataclass
    class Served:
        manifest: PackageManifest
        artifact: ModelArtifact

    first = Served(package("p1", raw), ModelArtifact(file="m.onnx", runtime="onnxruntime", precision="fp32"))
    tampered = Served(package("p2", raw + b" "), first.artifact)  # the file no longer matches its hash
    reports, samples = [], []
    clock = iter(float(t) for t in range(10_000))
    monitoring = AgentMonitoring(
        MonitoringConfig(window_frames=4, subsample_interval_s=1.0, random_probability=1.0, per_minute_count=2),
        device_id="cam-1", package_dir=lambda pipeline, package_id: tmp_path / package_id,
        publish_drift=reports.append, publish_sample=lambda s, m, p: samples.append((s, m.package_id)),
        clock=lambda: next(clock), threaded=False)
    hook = monitoring.hook("main")

    @dataclass
    class Item:
        frame: np.ndarray

    for step in range(6):
        hook(first, Item(scene(step)), np.zeros(4, dtype=np.float32))
    assert [r.frames for r in reports] == [4] and reports[0].package_id == "p1"
    assert reports[0].reference_sha256 == hashlib.sha256(raw).hexdigest()
    for step in range(6):
        hook(tampered, Item(scene(10 + step)), np.zeros(4, dtype=np.float32))
    # The switch closed p1's partial window; p2's reference fails its hash, so no windows for it.
    assert [r.frames for r in reports] == [4, 2] and all(r.package_id == "p1" for r in reports)
    # Budgets belong to the device: 12 frames over 12 simulated seconds, at most 2 a minute.
    assert len(samples) == 2 and {p for _, p in samples} == {"p1"}


def test_default_settings_close_a_testable_window_within_a_minute_at_demo_frame_rates(tmp_path) -> None:
    """The agent's defaults (no ``monitoring:`` section): a camera at 10 fps, scenes changing now and then."""
    from agent.telemetry.drift import MonitoringConfig
    from cloud.monitor.config import MonitorSettings

    config = MonitoringConfig()
    manifest = PackageManifest(
        package_id="p1", model_name="m", model_version="v1", created_at=utc_now(), hardware_profiles=["x"],
        labels=["circle", "cross", "square", "triangle"], preprocessing=SPEC,
        artifacts=[ModelArtifact(file="m.onnx", runtime="onnxruntime", precision="fp32")],
        files=[PackageFile(name="m.onnx", sha256="0" * 64, size_bytes=1)])
    monitor = DeviceMonitor(
        device_id="cam-1", manifest=manifest, reference=reference(), collector=None,
        subsampler=FrameSubsampler(interval_s=config.subsample_interval_s, scene_change=config.scene_change),
        window_frames=config.window_frames, window_s=config.window_s)
    rng = np.random.default_rng(0)
    first_at: float | None = None
    first = None
    frames = [scene(seed) for seed in range(8)]
    for step in range(60 * 10):  # one simulated minute at 10 fps
        now_s = step / 10
        observed = monitor.observe(frames[(step // 25) % len(frames)], rng.normal(size=4), now_s=now_s)
        if observed.reports and first is None:
            first, first_at = observed.reports[0], now_s
    assert first is not None and first_at is not None and first_at < 60.0
    # Enough frames for the control plane to test it, not just store it.
    assert first.frames >= MonitorSettings().min_window_frames


def test_the_documented_monitoring_keys_are_the_agent_defaults() -> None:
    """docs/drift.md names the keys that decide when windows arrive; they must be real and current."""
    import re
    import textwrap
    from pathlib import Path

    import yaml

    from agent.telemetry.drift import MonitoringConfig

    text = (Path(__file__).resolve().parents[2] / "docs" / "drift.md").read_text()
    blocks = [yaml.safe_load(textwrap.dedent(m.group(1))) for m in re.finditer(r"```yaml\n(.*?)^ *```", text, re.S | re.M)]
    documented = next(b["monitoring"] for b in blocks if isinstance(b, dict) and "monitoring" in b)
    assert MonitoringConfig.model_validate(documented) == MonitoringConfig()
