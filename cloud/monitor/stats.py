"""Drift tests over fixed-edge histograms: pure functions and a small sequential detector.

* :func:`chi2_two_sample` — a two-sample chi-square homogeneity test of a window's
  histogram against the reference's, after merging adjacent bins until every group
  expects at least ``min_expected`` window counts (so small windows stay valid).
  Two-sample rather than goodness-of-fit: the reference is itself a finite sample.
* :func:`psi` — the population stability index, reported as a score, never used to
  decide (its null distribution depends on the window size; docs/drift.md).
* :func:`holm` — Holm's step-down correction across features.
* :func:`evaluate_window` — every feature plus the predicted-class counts → one window
  p-value (the smallest Holm-adjusted p) and a score ``-log10(p)``.
* :class:`Cusum` — CUSUM over window scores, so a run of correlated shifted windows
  raises one alert, not one per window; the alert clears after clean windows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from agent.contract.drift import (
    DETECTION_FEATURES,
    HISTOGRAM_BINS,
    DetectionReference,
    DriftReference,
    SequentialCalibration,
    decode_histograms,
    detection_feature_edges,
)
from agent.contract.messages import DetectionDrift

__all__ = ["Cusum", "CusumState", "DetectionCounts", "FeatureTest", "WindowTest", "chi2_two_sample",
           "detection_rows", "evaluate_window", "holm", "psi"]

CLASS_FEATURE = "predicted_class"
OBJECT_COUNTS_FEATURE = "object_counts"
BOXES_PER_FRAME_FEATURE = "boxes_per_frame"


def _merge_groups(expected: npt.NDArray[np.float64], min_expected: float) -> list[list[int]]:
    groups: list[list[int]] = []
    current: list[int] = []
    total = 0.0
    for index, value in enumerate(expected):
        current.append(index)
        total += value
        if total >= min_expected:
            groups.append(current)
            current, total = [], 0.0
    if current:
        if groups:
            groups[-1].extend(current)
        else:
            groups.append(current)
    return groups


def chi2_two_sample(window: npt.ArrayLike, reference: npt.ArrayLike, *, min_expected: float = 5.0) -> tuple[float, float, int]:
    """(statistic, p-value, degrees of freedom) of window vs reference counts over the same bins.

    Returns p = 1 with 0 degrees of freedom when either side is empty or only one group is left.
    """
    w = np.asarray(window, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    n_w, n_r = w.sum(), r.sum()
    if n_w <= 0 or n_r <= 0:
        return 0.0, 1.0, 0
    pooled = (w + r) / (n_w + n_r)
    groups = _merge_groups(pooled * min(n_w, n_r), min_expected)
    if len(groups) < 2:
        return 0.0, 1.0, 0
    w_g = np.asarray([w[g].sum() for g in groups])
    r_g = np.asarray([r[g].sum() for g in groups])
    p_g = (w_g + r_g) / (n_w + n_r)
    keep = p_g > 0
    e_w, e_r = p_g[keep] * n_w, p_g[keep] * n_r
    statistic = float((((w_g[keep] - e_w) ** 2) / e_w).sum() + (((r_g[keep] - e_r) ** 2) / e_r).sum())
    dof = int(keep.sum()) - 1
    if dof < 1:
        return 0.0, 1.0, 0
    # Imported here: scipy.stats takes seconds to import, and every `edgefleet` command imports this module.
    from scipy import stats as scipy_stats

    return statistic, float(scipy_stats.chi2.sf(statistic, dof)), dof


def psi(window: npt.ArrayLike, reference: npt.ArrayLike, *, epsilon: float = 1e-4) -> float:
    """Population stability index of ``window`` against ``reference`` counts."""
    w = np.asarray(window, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    if w.sum() <= 0 or r.sum() <= 0:
        return 0.0
    pw = np.clip(w / w.sum(), epsilon, None)
    pr = np.clip(r / r.sum(), epsilon, None)
    return float(((pw - pr) * np.log(pw / pr)).sum())


def holm(p_values: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Holm-adjusted p-values (same order as given), monotone and capped at 1."""
    p = np.asarray(p_values, dtype=np.float64)
    m = p.size
    order = np.argsort(p)
    adjusted = np.empty(m, dtype=np.float64)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[index]))
        adjusted[index] = running
    return adjusted


@dataclass(frozen=True)
class DetectionCounts:
    """A detection window's counts: box histograms (4, 32), objects per class, frames by box count (32)."""

    histograms: npt.NDArray[np.int64]
    object_counts: list[int]
    boxes_per_frame: list[int]

    @classmethod
    def from_window(cls, drift: DetectionDrift) -> DetectionCounts:
        return cls(decode_histograms(drift.histograms, len(DETECTION_FEATURES)), list(drift.object_counts),
                   list(drift.boxes_per_frame))

    def __add__(self, other: DetectionCounts) -> DetectionCounts:
        """Windows merge by addition (a fleet or a camera over time)."""
        objects = (np.asarray(self.object_counts) + np.asarray(other.object_counts)).tolist() \
            if len(self.object_counts) == len(other.object_counts) else list(self.object_counts)
        return DetectionCounts(self.histograms + other.histograms, objects,
                               (np.asarray(self.boxes_per_frame) + np.asarray(other.boxes_per_frame)).tolist())


def _bin_values() -> npt.NDArray[np.float64]:
    """A representative value for each detection bin: the midpoint of its edges (the edge for the open ends)."""
    edges = detection_feature_edges()
    middles = (edges[:, 1:] + edges[:, :-1]) / 2
    return np.concatenate([edges[:, :1], middles, edges[:, -1:]], axis=1)


def binned_mean(counts: npt.NDArray[np.integer] | npt.NDArray[np.floating], index: int) -> float | None:
    """Mean of a detection feature from its histogram (bin midpoints); None without boxes."""
    row = np.asarray(counts, dtype=np.float64)
    total = row.sum()
    return None if total <= 0 else round(float((row * _bin_values()[index]).sum() / total), 4)


Row = tuple[str, float, int, float, float, float | None, float | None]


def detection_rows(reference: DetectionReference, window: DetectionCounts, *, min_expected: float = 5.0) -> list[Row]:
    """Chi-square rows for the four box features, the objects per class and the boxes per frame.

    Box histograms count boxes, not frames: boxes of one frame are not independent, so
    these p-values run small on clean data; the package's CUSUM allowance ``k`` is
    calibrated on windows of whole frames, which absorbs it. Means (for the evidence)
    are computed from bin midpoints on both sides, so they compare like with like.
    """
    rows: list[Row] = []
    ref_counts = reference.counts_array()
    for index, name in enumerate(DETECTION_FEATURES):
        statistic, p, dof = chi2_two_sample(window.histograms[index], ref_counts[index], min_expected=min_expected)
        rows.append((name, statistic, dof, p, psi(window.histograms[index], ref_counts[index]),
                     binned_mean(window.histograms[index], index), binned_mean(ref_counts[index], index)))
    if len(window.object_counts) == len(reference.object_counts):
        statistic, p, dof = chi2_two_sample(window.object_counts, reference.object_counts, min_expected=min_expected)
        rows.append((OBJECT_COUNTS_FEATURE, statistic, dof, p, psi(window.object_counts, reference.object_counts),
                     None, None))
    per_frame = np.arange(HISTOGRAM_BINS, dtype=np.float64)
    ref_frames = np.asarray(reference.boxes_per_frame, dtype=np.float64)
    win_frames = np.asarray(window.boxes_per_frame, dtype=np.float64)
    statistic, p, dof = chi2_two_sample(win_frames, ref_frames, min_expected=min_expected)
    rows.append((BOXES_PER_FRAME_FEATURE, statistic, dof, p, psi(win_frames, ref_frames),
                 round(float((win_frames * per_frame).sum() / max(win_frames.sum(), 1)), 4),
                 round(float((ref_frames * per_frame).sum() / max(ref_frames.sum(), 1)), 4)))
    return rows


@dataclass(frozen=True)
class FeatureTest:
    name: str
    statistic: float
    dof: int
    p_value: float
    p_adjusted: float
    psi: float
    window_mean: float | None = None
    reference_mean: float | None = None


@dataclass(frozen=True)
class WindowTest:
    frames: int
    features: list[FeatureTest]
    p_value: float
    score: float
    tested: bool = True

    @property
    def drifted_features(self) -> list[str]:
        return [f.name for f in self.features if f.p_adjusted < 0.01]

    def evidence(self, top: int = 5) -> dict[str, object]:
        """The numbers an operator needs: window p-value and score, the worst features with PSI."""
        worst = sorted(self.features, key=lambda f: f.p_value)[:top]
        return {
            "frames": self.frames,
            "window_p": self.p_value,
            "score": round(self.score, 3),
            "features": [
                {"name": f.name, "p": f.p_value, "p_holm": f.p_adjusted, "chi2": round(f.statistic, 2), "dof": f.dof,
                 "psi": round(f.psi, 4), "window_mean": f.window_mean, "reference_mean": f.reference_mean}
                for f in worst
            ],
        }


def evaluate_window(
    reference: DriftReference,
    counts: npt.NDArray[np.integer],
    class_counts: list[int] | None = None,
    *,
    means: list[float] | None = None,
    min_frames: int = 20,
    min_expected: float = 5.0,
    detection: DetectionCounts | None = None,
) -> WindowTest:
    """Test one (possibly merged) window's histograms against the reference.

    ``counts`` has shape (features, 32) in the reference's feature order. Windows
    with fewer than ``min_frames`` frames are not tested (``tested=False``, p = 1).
    A detection package's window also tests ``detection`` against the reference's
    detection part (:func:`detection_rows`); Holm's correction covers every row.
    """
    ref_counts = reference.counts_array()
    if counts.shape != ref_counts.shape:
        raise ValueError(f"window histograms have shape {counts.shape}, the reference {ref_counts.shape}")
    frames = int(counts.sum(axis=1).max()) if counts.size else 0
    if frames < min_frames:
        return WindowTest(frames=frames, features=[], p_value=1.0, score=0.0, tested=False)
    rows: list[Row] = []
    for index, feature in enumerate(reference.features):
        statistic, p, dof = chi2_two_sample(counts[index], ref_counts[index], min_expected=min_expected)
        window_mean = None if means is None or index >= len(means) else round(float(means[index]), 4)
        rows.append((feature.name, statistic, dof, p, psi(counts[index], ref_counts[index]), window_mean,
                     round(feature.mean, 4)))
    if class_counts and reference.class_counts and len(class_counts) == len(reference.class_counts):
        statistic, p, dof = chi2_two_sample(class_counts, reference.class_counts, min_expected=min_expected)
        rows.append((CLASS_FEATURE, statistic, dof, p, psi(class_counts, reference.class_counts), None, None))
    if detection is not None and reference.detection is not None:
        rows.extend(detection_rows(reference.detection, detection, min_expected=min_expected))
    adjusted = holm([row[3] for row in rows])
    features = [FeatureTest(name=r[0], statistic=r[1], dof=r[2], p_value=r[3], p_adjusted=float(a), psi=r[4],
                            window_mean=r[5], reference_mean=r[6])
                for r, a in zip(rows, adjusted, strict=True)]
    window_p = float(adjusted.min()) if adjusted.size else 1.0
    return WindowTest(frames=frames, features=features, p_value=window_p, score=window_score(window_p, reference))


def window_score(p_value: float, reference: DriftReference | None = None) -> float:
    cap = reference.calibration.max_score if reference is not None else 20.0
    return min(cap, -math.log10(max(p_value, 1e-300)))


@dataclass
class CusumState:
    statistic: float = 0.0
    alarm: bool = False
    clean_run: int = 0
    windows: int = 0


Event = Literal["open", "clear"]


@dataclass
class Cusum:
    """One-sided CUSUM over window scores: ``S = max(0, S + score - k)``; alarm when ``S > h``.

    While alarmed, ``clear_windows`` consecutive windows scoring at most ``k`` clear
    the alarm and reset ``S``.
    """

    calibration: SequentialCalibration
    state: CusumState = field(default_factory=CusumState)

    def step(self, score: float) -> Event | None:
        c, s = self.calibration, self.state
        s.windows += 1
        s.statistic = max(0.0, s.statistic + min(score, c.max_score) - c.k)
        if not s.alarm:
            if s.statistic > c.h:
                s.alarm, s.clean_run = True, 0
                return "open"
            return None
        s.clean_run = s.clean_run + 1 if score <= c.k else 0
        if s.clean_run >= c.clear_windows:
            s.alarm, s.statistic, s.clean_run = False, 0.0, 0
            return "clear"
        return None
