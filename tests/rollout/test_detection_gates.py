"""Pure core: detection gates (boxes per frame, objects per frame by class, mean box score)
and the shadow agreement of detection packages."""

from __future__ import annotations

from collections import Counter

import pytest

from cloud.rollout.gates import (
    DetectionCounts,
    GateStatus,
    GroupStats,
    InstallOutcomes,
    ShadowStats,
    TelemetryWindow,
    aggregate,
    count_rate_test,
    evaluate_shadow,
    evaluate_stratum,
)
from cloud.rollout.spec import GateThresholds, ShadowSpec

GOOD = {"person": 200, "car": 200, "dog": 200}  # per window of 100 frames: 6 objects a frame
CLASSIFICATION_GATES = {"mean_confidence", "class_distribution"}
DETECTION_GATES = {"boxes_per_frame", "class_counts_per_frame", "mean_box_score"}


def _windows(devices: int, objects: dict[str, int] | None = None, *, frames: int = 100, score: float = 0.7,
             prefix: str = "d", windows: int = 3) -> list[TelemetryWindow]:
    counts = dict(GOOD if objects is None else objects)
    part = DetectionCounts(frames=frames, boxes=sum(counts.values()), mean_box_score=score if counts else None,
                           object_counts=counts)
    return [TelemetryWindow(f"{prefix}{i}", frames, 0, 5.0, None, {}, detection=part)
            for i in range(devices) for _ in range(windows)]


def _gates(canary: list[TelemetryWindow], control: list[TelemetryWindow], *, interim: bool = False,
           **thresholds: float) -> dict[str, tuple[GateStatus, float | None]]:
    results = evaluate_stratum(GateThresholds(**thresholds), installs=InstallOutcomes(succeeded=3),
                               canary=aggregate(canary), control=aggregate(control), interim=interim)
    return {r.gate: (r.status, r.observed) for r in results}


def test_an_equally_good_detector_passes_and_detection_gates_replace_the_classification_ones() -> None:
    gates = _gates(_windows(3), _windows(10, prefix="c"))
    assert set(gates) >= DETECTION_GATES and not CLASSIFICATION_GATES & set(gates)
    assert {status for status, _ in gates.values()} == {GateStatus.PASS}, gates
    assert gates["boxes_per_frame"][1] == pytest.approx(0.0)


def test_half_the_recall_fails_boxes_per_frame_and_every_class() -> None:
    half = {label: count // 2 for label, count in GOOD.items()}
    gates = _gates(_windows(3, half), _windows(10, prefix="c"))
    assert gates["boxes_per_frame"] == (GateStatus.FAIL, pytest.approx(-0.5))
    assert gates["class_counts_per_frame"][0] == GateStatus.FAIL
    assert gates["mean_box_score"][0] == GateStatus.PASS  # the boxes it finds score as before


def test_twice_the_boxes_also_fails() -> None:
    double = {label: count * 2 for label, count in GOOD.items()}
    assert _gates(_windows(3, double), _windows(10, prefix="c"))["boxes_per_frame"] == (GateStatus.FAIL,
                                                                                        pytest.approx(1.0))


def test_a_class_the_candidate_stops_finding_fails_the_per_class_gate_though_the_total_holds() -> None:
    # Dogs become cars: boxes per frame unchanged, the class mix is not.
    confused = {"person": 200, "car": 400, "dog": 0}
    gates = _gates(_windows(3, confused), _windows(10, prefix="c"))
    assert gates["boxes_per_frame"][0] == GateStatus.PASS
    assert gates["class_counts_per_frame"][0] == GateStatus.FAIL
    assert gates["class_counts_per_frame"][1] == pytest.approx(1.0)  # cars doubled (dogs -100 %)


def test_lower_box_scores_fail_the_score_gate() -> None:
    gates = _gates(_windows(3, score=0.5), _windows(10, prefix="c", score=0.7))
    assert gates["mean_box_score"] == (GateStatus.FAIL, pytest.approx(0.2))
    assert gates["boxes_per_frame"][0] == GateStatus.PASS


def test_small_changes_and_small_samples_do_not_fail() -> None:
    # 10 % fewer boxes: inside the allowed change, however many frames back it.
    fewer = {label: count * 9 // 10 for label, count in GOOD.items()}
    assert _gates(_windows(3, fewer), _windows(10, prefix="c"))["boxes_per_frame"][0] == GateStatus.PASS
    # Half the boxes, but on a few correlated frames: not significant, so no verdict yet.
    half = {label: count // 2 for label, count in GOOD.items()}
    few = _gates(_windows(1, half, frames=10, windows=1), _windows(1, frames=10, windows=1, prefix="c"),
                 min_frames=10, frames_per_independent_sample=10)
    assert few["boxes_per_frame"][0] == GateStatus.PASS
    short = _gates(_windows(1, half, windows=1), _windows(10, prefix="c"), min_frames=200)
    assert {short[g][0] for g in DETECTION_GATES} == {GateStatus.INSUFFICIENT}


def test_interim_looks_need_stronger_evidence() -> None:
    # A 40 % drop on 300 frames, one sample per 10 frames: significant at the final
    # alpha (0.001), not at the interim alpha (0.001 x 0.01).
    drop = {label: count * 6 // 10 for label, count in GOOD.items()}
    canary, control = _windows(1, drop), _windows(1, prefix="c")
    assert _gates(canary, control)["boxes_per_frame"][0] == GateStatus.FAIL
    assert _gates(canary, control, interim=True)["boxes_per_frame"][0] == GateStatus.PASS


def test_count_rate_test_is_exact_for_two_poisson_rates() -> None:
    assert count_rate_test(50, 100, 50, 100) == pytest.approx(1.0)
    assert count_rate_test(0, 100, 0, 100) == 1.0
    assert count_rate_test(30, 100, 90, 100) < 1e-6
    # Correlated frames: the same counts as ten times fewer samples are weaker evidence.
    assert count_rate_test(30, 100, 90, 100, frames_per_sample=10) > 0.01


def test_classification_windows_keep_the_classification_gates() -> None:
    windows = [TelemetryWindow(f"d{i}", 200, 0, 5.0, 0.9, {"a": 100, "b": 100}) for i in range(3)]
    gates = _gates(windows, windows)
    assert set(gates) >= CLASSIFICATION_GATES and not DETECTION_GATES & set(gates)


def test_the_task_follows_the_control_group_until_canaries_report() -> None:
    gates = _gates([], _windows(10, prefix="c"))
    assert {gates[g][0] for g in DETECTION_GATES} == {GateStatus.INSUFFICIENT}


def test_baselines_round_trip_with_detection_fields_and_old_baselines_still_load() -> None:
    stats = aggregate(_windows(2, score=0.6))
    again = GroupStats.from_json(stats.to_json())
    assert again == stats and again.object_counts == Counter({"person": 1200, "car": 1200, "dog": 1200})
    assert again.boxes_per_frame == pytest.approx(6.0) and again.mean_box_score == pytest.approx(0.6)
    old = {"devices": 2, "windows": 6, "frames": 600, "errors": 0, "confidence_frames": 600, "confidence_sum": 540.0,
           "p95_latency_ms": [5.0], "class_counts": {"a": 600}, "drift_scores": [], "restarts": 0}
    loaded = GroupStats.from_json(old)
    assert loaded.detection_frames == 0 and loaded.object_counts == Counter() and not loaded.detects
    assert "boxes_per_frame" not in loaded.summary() and stats.summary()["boxes_per_frame"] == 6.0


def test_shadow_agreement_of_detectors_is_the_share_of_matched_boxes() -> None:
    spec = ShadowSpec(min_frames=100, min_agreement=0.9)
    same = ShadowStats(devices=2, frames=200, agreements=200, boxes_active=1200, boxes_candidate=1200,
                       boxes_matched=1200)
    half = ShadowStats(devices=2, frames=200, agreements=0, boxes_active=1200, boxes_candidate=600,
                       boxes_matched=600)
    passed = {r.gate: r for r in evaluate_shadow(spec, same)}["shadow_agreement"]
    failed = {r.gate: r for r in evaluate_shadow(spec, half)}["shadow_agreement"]
    assert passed.status == GateStatus.PASS and passed.observed == 1.0
    assert failed.status == GateStatus.FAIL and failed.observed == pytest.approx(2 * 600 / 1800)
    assert failed.numbers["boxes_matched"] == 600 and "boxes matched" in failed.message
    # Frames where neither model saw anything agree; classification shadows are unchanged.
    empty = ShadowStats(frames=200, agreements=200)
    assert {r.gate: r for r in evaluate_shadow(spec, empty)}["shadow_agreement"].observed == 1.0


def test_the_ingest_listener_keeps_detection_parts_and_box_matches_for_the_engine() -> None:
    from datetime import timedelta

    from sqlmodel import Session, SQLModel, create_engine, select

    from agent.contract import ShadowWindow, TelemetryReport
    from agent.contract.messages import DetectionWindow
    from cloud.core.timestamps import utc_now
    from cloud.rollout.listener import record_rollout_window
    from cloud.rollout.service import detection_parts
    from cloud.rollout.tables import RolloutWindow

    engine = create_engine("sqlite://")
    SQLModel.metadata.create_all(engine, tables=[RolloutWindow.__table__])  # type: ignore[attr-defined]
    detection = DetectionWindow(frames=10, object_counts={"person": 20, "car": 10}, mean_box_score=0.6,
                                boxes_per_frame=3.0, empty_frames=0)
    shadow = ShadowWindow(package_id="pkg-new", frames=10, agreements=0, boxes_active=30, boxes_candidate=15,
                          boxes_matched=15)
    detecting = TelemetryReport(device_id="cam-1", window_s=1.0, frames=10, fps=10.0, detection=detection,
                                shadow=shadow)
    classifying = TelemetryReport(device_id="cam-1", window_s=1.0, frames=10, fps=10.0, class_counts={"a": 10})
    with Session(engine) as session:
        for report in (detecting, detecting, classifying):  # a QoS 1 redelivery, and a healthy classifier window
            record_rollout_window(session, report)
        rows = list(session.exec(select(RolloutWindow)))
        assert len(rows) == 1  # the classification window costs nothing, the redelivery is kept once
        row = rows[0]
        assert (row.shadow_boxes_active, row.shadow_boxes_candidate, row.shadow_boxes_matched) == (30, 15, 15)
        parts = detection_parts(session, ["cam-1"], utc_now() - timedelta(minutes=1))
    assert parts == {detecting.message_id: DetectionCounts(frames=10, boxes=30, mean_box_score=0.6,
                                                           object_counts={"person": 20, "car": 10})}
