"""Detection on the device beyond decoding: box matching in shadow mode, the detection
samplers, and samples that carry their boxes on the wire."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from agent.contract import (
    MANIFEST_FILE,
    PackageFile,
    PackageManifest,
    SampleReport,
    ShadowWindow,
    parse_report,
)
from agent.contract.topics import ReportKind
from agent.infer.detect import Detection
from agent.infer.engine import LoadedModel, load_model
from agent.infer.shadow import ShadowRunner, match_boxes
from agent.telemetry.drift import AgentMonitoring, MonitoringConfig
from agent.telemetry.samples import (
    BoxUncertaintySampler,
    BudgetLimits,
    CapturedSample,
    SampleBudget,
    SampleCandidate,
    SampleCollector,
    ShadowDisagreementSampler,
    UncertaintySampler,
)
from tests.support.detection_models import (
    DET_LABELS,
    DET_SPEC,
    DETECTION,
    INPUT_SIZE,
    SCENE,
    TrueBox,
    half_recall,
    yolo_raw_detector,
)


def _box(x1: float, y1: float, x2: float, y2: float, label: str = "person", score: float = 0.9) -> Detection:
    return Detection(x1=x1, y1=y1, x2=x2, y2=y2, class_id=DET_LABELS.index(label), label=label, score=score)


# --- IoU matching -----------------------------------------------------------------------------
def test_boxes_match_one_to_one_at_iou_half_and_only_within_a_class() -> None:
    active = [_box(0, 0, 10, 10), _box(20, 0, 30, 10, "car"), _box(40, 0, 50, 10, "dog")]
    candidate = [
        _box(0, 0, 10, 15),            # IoU 100/150 = 0.67 with the first: a match
        _box(0, 0, 10, 10),            # a duplicate of the first: that box is taken already
        _box(20, 0, 30, 10, "person"), # same place as the car, other class: no match
        _box(40, 0, 50, 20, "dog"),    # IoU exactly 0.5: a match (the threshold is inclusive)
    ]
    match = match_boxes(active, candidate)
    assert (match.active, match.candidate, match.matched) == (3, 4, 2)
    assert match.unmatched == 3 and not match.agrees


def test_matching_takes_the_best_overlap_first() -> None:
    # Greedy by IoU: the candidate box overlapping both active boxes goes to the closer one,
    # leaving the other active box to the second candidate.
    active = [_box(0, 0, 10, 10), _box(2, 0, 12, 10)]
    candidate = [_box(1.8, 0, 11.8, 10), _box(0, 0, 10, 10)]
    assert match_boxes(active, candidate).matched == 2
    assert match_boxes([], candidate).matched == 0 and match_boxes(active, []).unmatched == 2
    assert match_boxes(active, active).agrees


# --- shadow mode with real ONNX detectors ---------------------------------------------------------
def _detector(tmp_path: Path, name: str, boxes: tuple[TrueBox, ...]) -> LoadedModel:
    directory = tmp_path / name
    directory.mkdir()
    model_path = yolo_raw_detector(directory / "model.onnx", boxes)
    manifest = PackageManifest.model_validate({
        "package_id": f"pkg-{name}", "model_name": "det", "model_version": name, "created_at": datetime.now(UTC),
        "hardware_profiles": ["x86-cpu"], "labels": DET_LABELS, "preprocessing": DET_SPEC, "task": "detection",
        "detection": DETECTION, "artifacts": [{"file": "model.onnx", "runtime": "onnxruntime", "precision": "fp32",
                                               "output_name": "output0"}],
        "files": [PackageFile(name="model.onnx", sha256="0" * 64, size_bytes=model_path.stat().st_size)]})
    (directory / MANIFEST_FILE).write_bytes(manifest.model_dump_json().encode())
    return load_model(manifest, directory)


def test_a_half_recall_candidate_matches_a_third_fewer_boxes_and_the_window_says_so(tmp_path: Path) -> None:
    active = _detector(tmp_path, "good", SCENE)
    frames = [np.random.default_rng(i).integers(0, 255, size=(48, 64, 3), dtype=np.uint8) for i in range(5)]
    active_boxes = [tuple(_run(active, f)) for f in frames]
    assert all(len(b) == len(SCENE) for b in active_boxes)

    results = {}
    for name, boxes in (("same", SCENE), ("half", half_recall())):
        runner = ShadowRunner(_detector(tmp_path, name, boxes), sample_fraction=1.0, duration_s=60,
                              rng=random.Random(1))
        shadowed = [runner.observe_detections(f, b, 1.0) for f, b in zip(frames, active_boxes, strict=True)]
        window = runner.take_window()
        assert window is not None and all(s is not None for s in shadowed)
        results[name] = window
    same, half = results["same"], results["half"]
    assert (same.frames, same.agreements, same.boxes_matched) == (5, 5, 5 * len(SCENE))
    assert same.boxes_active == same.boxes_candidate == 5 * len(SCENE)
    # Half the objects: 3 of 6 boxes per frame pair up, no frame agrees fully.
    assert (half.boxes_active, half.boxes_candidate, half.boxes_matched, half.agreements) == (30, 15, 15, 0)
    assert half.class_counts == {"person": 5, "car": 5, "dog": 5}
    # On the wire the counts round-trip, and an impossible match count is refused.
    assert ShadowWindow.model_validate_json(half.model_dump_json()) == half
    with pytest.raises(ValueError, match="boxes_matched"):
        ShadowWindow(package_id="p", boxes_active=2, boxes_candidate=5, boxes_matched=3)


def test_a_classifier_candidate_beside_a_detector_counts_as_candidate_errors(tmp_path: Path) -> None:
    from tests.agent.onnx_models import LABELS, SPEC, scored_model

    directory = tmp_path / "cls"
    directory.mkdir()
    path = scored_model(directory / "model.onnx", [0.1, 0.2, 0.3, 0.4], work_layers=1)
    manifest = PackageManifest.model_validate({
        "package_id": "pkg-cls", "model_name": "cls", "model_version": "cls", "created_at": datetime.now(UTC),
        "hardware_profiles": ["x86-cpu"], "labels": LABELS, "preprocessing": SPEC,
        "artifacts": [{"file": "model.onnx", "runtime": "onnxruntime", "precision": "fp32"}],
        "files": [PackageFile(name="model.onnx", sha256="0" * 64, size_bytes=path.stat().st_size)]})
    runner = ShadowRunner(load_model(manifest, directory), sample_fraction=1.0, duration_s=60)
    frame = np.zeros((48, 64, 3), dtype=np.uint8)
    assert runner.observe_detections(frame, (_box(0, 0, 10, 10),), None) is None
    window = runner.take_window()
    assert window is not None and (window.frames, window.candidate_errors) == (0, 1)


def _run(model: LoadedModel, frame: np.ndarray) -> list[Detection]:
    from agent.infer.shadow import run_candidate_detections

    return list(run_candidate_detections(model, frame)[0])


# --- samplers -------------------------------------------------------------------------------
def _candidate(detections: tuple[Detection, ...] | None, *, shadow: tuple[Detection, ...] | None = None,
               unmatched: int = 0, seed: int = 0) -> SampleCandidate:
    frame = np.random.default_rng(seed).integers(0, 255, size=(100, 200, 3), dtype=np.uint8)
    scores = np.asarray([d.score for d in detections or ()])
    return SampleCandidate(frame_bgr=frame, probabilities=scores, label=detections[0].label if detections else "",
                           now_s=1.0, detections=detections, score_threshold=0.25, candidate_detections=shadow,
                           unmatched_boxes=unmatched)


def test_box_uncertainty_picks_frames_with_a_box_just_above_the_threshold() -> None:
    sampler = BoxUncertaintySampler(band=0.1)
    confident = (_box(0, 0, 10, 10, score=0.9), _box(20, 0, 30, 10, "car", 0.36))
    unsure = (_box(0, 0, 10, 10, score=0.9), _box(20, 0, 30, 10, "car", 0.3))
    assert sampler.select(_candidate(confident)) is None
    reason = sampler.select(_candidate(unsure))
    assert reason is not None and "car 0.30" in reason and "threshold 0.25" in reason
    assert sampler.select(_candidate(())) is None  # no boxes, nothing near the threshold
    assert BoxUncertaintySampler(band=0.1, min_boxes=2).select(_candidate(unsure)) is None
    # The classification sampler leaves detection frames alone (box scores are not a distribution).
    assert UncertaintySampler("margin", margin_below=0.99).select(_candidate(unsure)) is None


def test_disagreement_sampler_needs_a_shadowed_frame_with_unmatched_boxes() -> None:
    sampler = ShadowDisagreementSampler()
    boxes = (_box(0, 0, 10, 10),)
    assert sampler.select(_candidate(boxes)) is None  # not shadowed
    assert sampler.select(_candidate(boxes, shadow=boxes, unmatched=0)) is None
    reason = sampler.select(_candidate(boxes, shadow=(), unmatched=1))
    assert reason == "1 unmatched box(es): active 1, candidate 0"


def test_a_disagreement_sample_carries_both_models_boxes_as_fractions_and_round_trips() -> None:
    collector = SampleCollector([ShadowDisagreementSampler(), BoxUncertaintySampler()],
                                SampleBudget(BudgetLimits()))
    active = (_box(20, 10, 60, 90, score=0.9), _box(100, 50, 200, 100, "car", 0.3))
    shadow = (_box(22, 10, 60, 90, score=0.8),)
    captured = collector.offer(_candidate(active, shadow=shadow, unmatched=1))
    assert captured is not None and captured.sampler == "disagreement"
    assert [(b.model, b.label, b.x1, b.y1, b.x2, b.y2) for b in captured.boxes] == [
        ("active", "person", 0.1, 0.1, 0.3, 0.9), ("active", "car", 0.5, 0.5, 1.0, 1.0),
        ("candidate", "person", 0.11, 0.1, 0.3, 0.9)]
    report = captured.to_report("cam-1", upload="inline")
    parsed = parse_report(ReportKind.SAMPLES, report.to_bytes(), "cam-1")
    assert isinstance(parsed, SampleReport) and parsed.boxes == report.boxes and len(parsed.boxes) == 3
    # An uncertainty sample shows the active model's boxes only.
    alone = collector.offer(_candidate(active, seed=1))
    assert alone is not None and alone.sampler == "uncertainty" and {b.model for b in alone.boxes} == {"active"}


def test_a_frame_with_more_boxes_than_fit_keeps_the_best_of_each_model() -> None:
    many = tuple(_box(i, 0, i + 1, 1, score=0.9 - i / 100) for i in range(40))
    captured = SampleCollector([ShadowDisagreementSampler()], SampleBudget(BudgetLimits())).offer(
        _candidate(many, shadow=many[:20], unmatched=20))
    assert captured is not None and len(captured.boxes) == 32
    assert [b.model for b in captured.boxes].count("candidate") == 16
    assert captured.boxes[0].score == pytest.approx(0.9)


def test_monitoring_offers_detection_frames_and_always_the_disagreeing_ones(tmp_path: Path) -> None:
    active = _detector(tmp_path, "good", SCENE)
    candidate = _detector(tmp_path, "half", half_recall())
    published: list[CapturedSample] = []
    clock = [100.0]
    monitoring = AgentMonitoring(
        MonitoringConfig(random_probability=0.0, subsample_interval_s=60.0, scene_change=1000.0,
                         box_uncertainty_band=0.01),
        device_id="cam-1", package_dir=lambda pipeline, package_id: tmp_path / package_id.removeprefix("pkg-"),
        publish_drift=lambda report: None, publish_sample=lambda sample, manifest, pipeline: published.append(sample),
        clock=lambda: clock[0], threaded=False)
    runner = ShadowRunner(candidate, sample_fraction=1.0, duration_s=60)
    for seed in range(3):
        frame = np.random.default_rng(seed).integers(0, 255, size=(INPUT_SIZE, INPUT_SIZE, 3), dtype=np.uint8)
        boxes = tuple(_run(active, frame))
        shadowed = runner.observe_detections(frame, boxes, None, sampled=True) if seed else None
        monitoring.on_detections("main", active, frame, boxes, shadowed)
        clock[0] += 1.0  # inside the 60 s subsample interval: only disagreeing frames pass
    # Frame 0: subsampled (first frame) but nothing uncertain (band 0.01 above 0.25, lowest is 0.3);
    # frames 1 and 2 disagree with the shadow and are offered despite the subsampler; the
    # disagreement cap (2 a minute) keeps both.
    assert [s.sampler for s in published] == ["disagreement", "disagreement"]
    assert all(sum(b.model == "candidate" for b in s.boxes) == 3 and len(s.boxes) == 9 for s in published)


def test_the_engine_hands_detection_frames_to_the_shadow_and_the_samplers_on_its_thread(tmp_path: Path) -> None:
    """The agent's wiring (agent/app.py): engine.detection_hook = shadows.detection_hook(monitoring)."""
    from agent.capture.latest import FrameItem, FrameSlot
    from agent.infer.engine import InferenceEngine
    from agent.infer.shadow import ShadowSet
    from agent.telemetry.window import WindowStats
    from tests.support.services import wait_for

    active = _detector(tmp_path, "good", SCENE)
    published: list[CapturedSample] = []
    monitoring = AgentMonitoring(
        MonitoringConfig(random_probability=0.0, subsample_interval_s=60.0, scene_change=1000.0),
        device_id="cam-1", package_dir=lambda pipeline, package_id: tmp_path / package_id.removeprefix("pkg-"),
        publish_drift=lambda report: None, publish_sample=lambda sample, manifest, pipeline: published.append(sample),
        threaded=False)
    shadows = ShadowSet()
    shadows.start("main", ShadowRunner(_detector(tmp_path, "half", half_recall()), sample_fraction=1.0,
                                       duration_s=60))
    slot: FrameSlot[FrameItem] = FrameSlot("every", depth=4)
    stats = WindowStats()
    engine = InferenceEngine(slot, stats)
    engine.detection_hook = shadows.detection_hook("main", monitoring.detection_hook("main"))
    engine.swap(active)
    engine.start()
    try:
        for seq in range(3):
            frame = np.random.default_rng(seq).integers(0, 255, size=(48, 64, 3), dtype=np.uint8)
            slot.put(FrameItem(seq=seq, frame=frame))
        wait_for(lambda: stats.total_frames == 3, 10, what="three frames inferred")
    finally:
        engine.stop()
    window = shadows.take_window("main")
    assert window is not None
    assert (window.frames, window.boxes_active, window.boxes_candidate, window.boxes_matched) == (3, 18, 9, 9)
    # Every frame disagreed: the disagreement cap (2 a minute) keeps two as such; the third
    # still has a box near the threshold (0.3 against 0.25), so the uncertainty sampler takes it.
    assert [s.sampler for s in published] == ["disagreement", "disagreement", "uncertainty"]
    assert [sum(b.model == "candidate" for b in s.boxes) for s in published] == [3, 3, 0]
