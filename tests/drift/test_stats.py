"""The control plane's drift tests as pure functions: chi-square, Holm, PSI, CUSUM, window tests."""

from __future__ import annotations

import numpy as np
import pytest

from agent.contract.drift import (
    HISTOGRAM_BINS,
    DriftReference,
    FeatureReference,
    SequentialCalibration,
)
from cloud.monitor.reference import histogram
from cloud.monitor.stats import Cusum, chi2_two_sample, evaluate_window, holm, psi


def reference_for(values: np.ndarray, calibration: SequentialCalibration | None = None) -> DriftReference:
    """A reference over (N, F) values with quantile edges, as the builder makes it."""
    edges = np.quantile(values, np.arange(1, HISTOGRAM_BINS) / HISTOGRAM_BINS, axis=0).T
    counts = histogram(values, edges)
    features = [FeatureReference(name=f"f{i}", edges=edges[i].tolist(), counts=counts[i].tolist(),
                                 mean=float(values[:, i].mean()), std=float(values[:, i].std()))
                for i in range(values.shape[1])]
    return DriftReference(labels=["a", "b"], features=features, reference_size=len(values),
                          calibration=calibration or SequentialCalibration(k=2.0, h=4.0, clear_windows=2))


def test_chi2_is_calibrated_under_the_null_and_powerful_under_a_shift() -> None:
    rng = np.random.default_rng(0)
    edges = np.quantile(rng.normal(size=20_000), np.arange(1, 32) / 32)
    ref = np.bincount(np.searchsorted(edges, rng.normal(size=2000), side="right"), minlength=32)
    null_p, shifted_p = [], []
    for _ in range(400):
        window = np.bincount(np.searchsorted(edges, rng.normal(size=200), side="right"), minlength=32)
        null_p.append(chi2_two_sample(window, ref)[1])
        moved = np.bincount(np.searchsorted(edges, rng.normal(0.7, 1, size=200), side="right"), minlength=32)
        shifted_p.append(chi2_two_sample(moved, ref)[1])
    # A valid test: about 5 % of clean windows below 0.05 (binomial slack), nearly all shifted ones.
    assert 0.01 < np.mean(np.asarray(null_p) < 0.05) < 0.10
    assert np.mean(np.asarray(shifted_p) < 1e-3) > 0.95


def test_chi2_merges_sparse_bins_and_handles_empty_sides() -> None:
    ref = np.zeros(32)
    ref[16:] = 500  # the reference never reaches the low bins
    window = np.zeros(32)
    window[:4] = 8
    statistic, p, dof = chi2_two_sample(window, ref)
    assert dof >= 1 and p < 1e-6 and statistic > 0
    same = np.zeros(32)
    same[16:] = 2
    assert chi2_two_sample(same, ref)[1] > 0.5
    # Too little evidence to test at all: one group left after merging.
    assert chi2_two_sample(np.eye(32)[0] * 3, ref) == (0.0, 1.0, 0)
    assert chi2_two_sample(np.zeros(32), ref) == (0.0, 1.0, 0)


def test_holm_is_monotone_and_bounded() -> None:
    adjusted = holm([0.01, 0.04, 0.03, 0.5])
    assert adjusted.tolist() == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert (holm(np.full(5, 0.9)) == 1.0).all()


def test_psi_is_zero_for_identical_and_grows_with_shift() -> None:
    ref = np.full(32, 10)
    assert psi(ref, ref) == pytest.approx(0.0)
    assert psi(np.r_[np.full(16, 18), np.full(16, 2)], ref) > 0.5


def test_window_test_names_the_drifted_feature() -> None:
    rng = np.random.default_rng(1)
    reference = reference_for(rng.normal(size=(4000, 3)))
    edges = reference.edges_array()
    clean = evaluate_window(reference, histogram(rng.normal(size=(300, 3)), edges))
    moved = rng.normal(size=(300, 3))
    moved[:, 1] += 1.0
    drifted = evaluate_window(reference, histogram(moved, edges), means=moved.mean(axis=0).tolist())
    assert clean.p_value > 1e-3 > drifted.p_value
    assert drifted.drifted_features == ["f1"]
    evidence = drifted.evidence()
    assert evidence["features"][0]["name"] == "f1" and evidence["features"][0]["psi"] > 0.1
    small = evaluate_window(reference, histogram(moved[:5], edges))
    assert not small.tested and small.p_value == 1.0


def test_cusum_raises_one_alert_per_run_and_clears_after_clean_windows() -> None:
    cusum = Cusum(SequentialCalibration(k=2.0, h=4.0, clear_windows=2))
    events = [cusum.step(score) for score in [0.5, 1.0, 0.3, 9.0, 8.0, 12.0, 7.0, 1.0, 0.2, 0.1, 9.0]]
    assert events == [None, None, None, "open", None, None, None, None, "clear", None, "open"]


def test_cusum_ignores_isolated_moderate_windows_but_catches_a_persistent_shift() -> None:
    cusum = Cusum(SequentialCalibration(k=2.0, h=6.0))
    assert [cusum.step(s) for s in [5.0, 0.0, 0.0, 5.0, 0.0, 0.0]] == [None] * 6
    assert [cusum.step(s) for s in [4.5, 4.5, 4.5]] == [None, None, "open"]
