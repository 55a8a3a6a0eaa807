"""agent/infer/shadow.py: the candidate beside the active model, sampled, bounded in time."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt

from agent.contract import ModelArtifact, PackageFile, PackageManifest, PreprocessSpec
from agent.infer.engine import LoadedModel
from agent.infer.shadow import ShadowRunner

LABELS = ["circle", "cross", "square", "triangle"]


class _Backend:
    """Scores that make the frame's mean brightness decide the class (or NaN)."""

    runtime = "fake"
    device = "CPU"

    def __init__(self, *, shift: int = 0, nan: bool = False) -> None:
        self.shift, self.nan = shift, nan

    def run(self, tensor: npt.NDArray[np.generic]) -> npt.NDArray[np.float32]:
        scores = np.zeros((1, len(LABELS)), dtype=np.float32)
        if self.nan:
            return scores + np.float32("nan")
        scores[0, (int(float(tensor.mean()) * 4) + self.shift) % len(LABELS)] = 5.0
        return scores


def _model(backend: _Backend, package_id: str = "cand-1") -> LoadedModel:
    manifest = PackageManifest(
        package_id=package_id, model_name="m", model_version=f"{package_id}-v", created_at=datetime.now(UTC),
        hardware_profiles=["x86-64-avx2"], labels=LABELS, preprocessing=PreprocessSpec(width=8, height=8),
        artifacts=[ModelArtifact(file="m.onnx", runtime="onnxruntime", precision="fp32")],
        files=[PackageFile(name="m.onnx", sha256="0" * 64, size_bytes=1)],
    )
    return LoadedModel(manifest=manifest, artifact=manifest.artifacts[0], backend=backend)


def _frame(level: int) -> npt.NDArray[np.uint8]:
    return np.full((16, 16, 3), level, dtype=np.uint8)


def _active_label(level: int) -> str:
    return LABELS[int(level / 255 * 4) % 4]


def test_an_identical_candidate_agrees_and_a_shuffled_one_does_not() -> None:
    for shift, expected in ((0, 1.0), (1, 0.0)):
        runner = ShadowRunner(_model(_Backend(shift=shift)), sample_fraction=1.0, duration_s=60)
        for level in (10, 80, 150, 220) * 5:
            runner.observe(_frame(level), _active_label(level), 2.0)
        window = runner.take_window()
        assert window is not None and window.frames == 20 and window.package_id == "cand-1"
        assert window.agreements / window.frames == expected
        assert window.candidate_p95_latency_ms is not None and window.active_p95_latency_ms == 2.0
        assert runner.take_window() == window.model_copy(update={
            "frames": 0, "agreements": 0, "candidate_p95_latency_ms": None, "active_p95_latency_ms": None,
            "class_counts": {}})  # a fresh window after each report


def test_samples_a_fraction_counts_nan_and_ends_on_time() -> None:
    clock = [0.0]
    runner = ShadowRunner(_model(_Backend(nan=True)), sample_fraction=0.25, duration_s=10,
                          clock=lambda: clock[0], rng=random.Random(1))
    for _ in range(400):
        runner.observe(_frame(100), "circle", 1.0)
    window = runner.take_window()
    assert window is not None and window.frames == 0
    assert 70 < window.candidate_errors < 130  # about a quarter of 400 frames, all NaN
    clock[0] = 11.0
    runner.observe(_frame(100), "circle", 1.0)
    assert runner.expired and runner.take_window() is None


def test_shadow_set_wraps_the_engine_output_hook_and_ends_after_reporting() -> None:
    from types import SimpleNamespace

    from agent.infer.shadow import ShadowSet

    clock = [0.0]
    seen: list[int] = []
    shadows = ShadowSet()
    hook = shadows.hook("main", lambda model, item, scores: seen.append(1))
    active = _model(_Backend(), package_id="active-1")
    shadows.start("main", ShadowRunner(_model(_Backend(shift=1)), sample_fraction=1.0, duration_s=5,
                                       clock=lambda: clock[0]))
    for level in (10, 80, 150, 220):
        scores = _Backend().run(np.full((1, 3, 8, 8), level / 255, dtype=np.float32))[0]
        hook(active, SimpleNamespace(frame=_frame(level)), scores)
    assert len(seen) == 4  # drift monitoring still sees every frame
    window = shadows.take_window("main")
    assert window is not None and window.frames == 4 and window.agreements == 0
    clock[0] = 6.0
    assert shadows.take_window("main") is None and shadows.runner("main") is None
