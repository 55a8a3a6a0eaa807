"""Samplers, budgets, near-duplicate suppression and stats-only mode (pure, no I/O)."""

from __future__ import annotations

import numpy as np
import pytest

from agent.contract import SampleReport
from agent.contract.messages import MAX_INLINE_SAMPLE_BYTES
from agent.telemetry.samples import (
    BudgetLimits,
    DriftTriggeredSampler,
    NearDuplicateFilter,
    OperatorRequestSampler,
    RandomSampler,
    SampleBudget,
    SampleCandidate,
    SampleCollector,
    UncertaintySampler,
    dhash64,
    encode_jpeg,
)

UNCERTAIN = np.asarray([0.3, 0.28, 0.22, 0.2])
CONFIDENT = np.asarray([0.97, 0.01, 0.01, 0.01])


def noisy_frame(rng: np.random.Generator, size: int = 96) -> np.ndarray:
    # Random noise: every frame is different (no near-duplicates) and compresses badly.
    return rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)


def candidate(frame: np.ndarray, p: np.ndarray, now_s: float) -> SampleCandidate:
    return SampleCandidate(frame_bgr=frame, probabilities=p, label="circle", now_s=now_s)


@pytest.mark.parametrize("stats_only", [False, True])
def test_budgets_hold_under_a_flood_of_uncertain_frames(stats_only: bool) -> None:
    limits = BudgetLimits(per_minute_count=5, per_hour_count=40, per_day_count=120, per_minute_bytes=60_000,
                          per_hour_bytes=300_000, per_day_bytes=900_000)
    collector = SampleCollector([UncertaintySampler("margin", margin_below=0.2)], SampleBudget(limits),
                                stats_only=stats_only, max_side=96, jpeg_quality=95)
    rng = np.random.default_rng(0)
    pool = [noisy_frame(rng, 32 if i % 2 else 96) for i in range(500)]
    taken: list[tuple[float, int]] = []
    # A simulated day and a half of uncertain frames, five every ten seconds.
    for step in range(3 * 86_400 // 20):
        now_s = step * 10.0
        for burst in range(5):
            captured = collector.offer(candidate(pool[(step * 5 + burst) % len(pool)], UNCERTAIN,
                                                 now_s + burst * 0.1))
            if captured is not None:
                assert (captured.jpeg is None) == stats_only
                taken.append((now_s + burst * 0.1, len(captured.jpeg or b"")))
    assert collector.counters.over_budget > 0
    times = np.asarray([t for t, _ in taken])
    sizes = np.asarray([b for _, b in taken])
    for period_s, max_count, max_bytes in ((60, 5, 60_000), (3600, 40, 300_000), (86_400, 120, 900_000)):
        for start in times:
            inside = (times >= start) & (times < start + period_s)
            assert inside.sum() <= max_count, period_s
            assert sizes[inside].sum() <= max_bytes, period_s
    # The budget is used, not starved: each day gets its full count (or its bytes run out first).
    first_day = times < 86_400
    assert first_day.sum() == 120 or sizes[first_day].sum() > 900_000 - 20_000


def test_byte_budget_binds_before_count_budget() -> None:
    budget = SampleBudget(BudgetLimits(per_minute_count=100, per_minute_bytes=10_000))
    assert budget.try_spend(6_000, 0.0)
    assert not budget.try_spend(6_000, 1.0)
    assert budget.try_spend(4_000, 2.0)
    assert budget.try_spend(6_000, 60.5)  # the first spend left the minute


def test_near_duplicates_are_suppressed() -> None:
    rng = np.random.default_rng(1)
    frame = noisy_frame(rng)
    collector = SampleCollector([RandomSampler(1.0, seed=0)], SampleBudget(BudgetLimits(per_minute_count=100)),
                                dedupe=NearDuplicateFilter(max_hamming=4))
    assert collector.offer(candidate(frame, CONFIDENT, 0.0)) is not None
    nudged = np.clip(frame.astype(np.int16) + 2, 0, 255).astype(np.uint8)
    assert dhash64(nudged) == dhash64(frame) or bin(dhash64(nudged) ^ dhash64(frame)).count("1") <= 4
    assert collector.offer(candidate(nudged, CONFIDENT, 1.0)) is None
    assert collector.counters.duplicates == 1
    assert collector.offer(candidate(noisy_frame(rng), CONFIDENT, 2.0)) is not None


def test_uncertainty_modes() -> None:
    frame = np.zeros((8, 8, 3), dtype=np.uint8)
    assert UncertaintySampler("margin", margin_below=0.1).select(candidate(frame, UNCERTAIN, 0)) is not None
    assert UncertaintySampler("margin", margin_below=0.1).select(candidate(frame, CONFIDENT, 0)) is None
    assert UncertaintySampler("entropy", entropy_above=0.9).select(candidate(frame, UNCERTAIN, 0)) is not None
    assert UncertaintySampler("entropy", entropy_above=0.9).select(candidate(frame, CONFIDENT, 0)) is None
    near = np.asarray([0.52, 0.48])
    assert UncertaintySampler("threshold", threshold=0.5, band=0.05).select(candidate(frame, near, 0)) is not None
    assert UncertaintySampler("threshold", threshold=0.5, band=0.05).select(candidate(frame, CONFIDENT[:2], 0)) is None


def test_random_drift_and_operator_samplers() -> None:
    frame = np.zeros((8, 8, 3), dtype=np.uint8)
    rate = np.mean([RandomSampler(0.1, seed=3).select(candidate(frame, CONFIDENT, 0)) is not None
                    for _ in range(1)])
    sampler = RandomSampler(0.1, seed=3)
    picked = sum(sampler.select(candidate(frame, CONFIDENT, 0)) is not None for _ in range(5000))
    assert 350 < picked < 650 and rate in (0.0, 1.0)
    drift = DriftTriggeredSampler(1.0, active_s=60)
    assert drift.select(candidate(frame, CONFIDENT, 10)) is None
    drift.trigger(10)
    assert drift.select(candidate(frame, CONFIDENT, 69)) == "drift window"
    assert drift.select(candidate(frame, CONFIDENT, 71)) is None
    operator = OperatorRequestSampler()
    operator.request(2)
    assert [operator.select(candidate(frame, CONFIDENT, 0)) for _ in range(3)] == ["operator request"] * 2 + [None]


def test_sampler_budget_keeps_room_for_the_random_stream() -> None:
    rng = np.random.default_rng(4)
    collector = SampleCollector(
        [UncertaintySampler("margin", margin_below=0.2), RandomSampler(0.5, seed=1)],
        SampleBudget(BudgetLimits(per_minute_count=10, per_minute_bytes=10**7)),
        sampler_budgets={"uncertainty": SampleBudget(BudgetLimits(per_minute_count=2, per_minute_bytes=10**7))})
    names = [c.sampler for step in range(600)
             if (c := collector.offer(candidate(noisy_frame(rng, 24), UNCERTAIN, step * 1.0))) is not None]
    assert names.count("uncertainty") <= 2 * 10 + 2
    assert names.count("random") > names.count("uncertainty")


def test_jpeg_is_downscaled_and_capped() -> None:
    rng = np.random.default_rng(2)
    jpeg, width, height = encode_jpeg(noisy_frame(rng, 640), max_side=160, quality=95)
    assert (width, height) == (160, 160) and len(jpeg) <= MAX_INLINE_SAMPLE_BYTES and jpeg[:2] == b"\xff\xd8"
    with pytest.raises(ValueError):
        encode_jpeg(noisy_frame(rng, 640), max_side=640, max_bytes=2_000)


def test_reports_inline_http_and_stats_only() -> None:
    rng = np.random.default_rng(5)
    collector = SampleCollector([RandomSampler(1.0)], SampleBudget(BudgetLimits(per_minute_count=10)), max_side=64)
    captured = collector.offer(candidate(noisy_frame(rng), UNCERTAIN, 0))
    assert captured is not None and captured.jpeg is not None
    inline = captured.to_report("cam-1", upload="inline")
    assert SampleReport.model_validate_json(inline.to_bytes()).image_sha256 == captured.image_sha256
    http = captured.to_report("cam-1", upload="http")
    assert http.image_b64 is None and http.upload == "http"
    private = SampleCollector([RandomSampler(1.0)], SampleBudget(BudgetLimits(per_minute_count=10)), stats_only=True)
    stats = private.offer(candidate(noisy_frame(rng), UNCERTAIN, 0))
    assert stats is not None and stats.jpeg is None
    report = stats.to_report("cam-1", upload="http")
    assert report.stats_only and report.image_sha256 is None and report.upload is None
