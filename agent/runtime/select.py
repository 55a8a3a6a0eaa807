"""Pick the runtime by measurement: every candidate the package offers and the
profile names is loaded, checked against the package's golden vectors and timed;
those that disagree beyond tolerance are discarded and the fastest one wins.

:func:`plan_candidates` and :func:`golden_error` are pure; :func:`measure` does the I/O.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.contract import ModelArtifact, PackageManifest, RuntimeMeasurement
from agent.errors import RuntimeLoadError
from agent.runtime import load_backend
from agent.runtime.base import InferenceBackend

log = logging.getLogger(__name__)

_DEVICE_KEYS = ("device", "execution_provider", "delegate")


@dataclass(frozen=True)
class Candidate:
    artifact: ModelArtifact
    device: str = ""  # "" = the runtime's default (CPU)

    def measurement(self, **fields: Any) -> RuntimeMeasurement:
        return RuntimeMeasurement(runtime=self.artifact.runtime, precision=self.artifact.precision,
                                  device=self.device or "CPU", file=self.artifact.file, **fields)


def plan_candidates(
    manifest: PackageManifest,
    *,
    hardware_profile: str,
    profile_runtimes: Sequence[Mapping[str, Any]] | None,
    available: Mapping[str, Sequence[str]],
) -> tuple[list[Candidate], list[RuntimeMeasurement]]:
    """Which (artifact, device) pairs to measure, and why the others are skipped.

    ``profile_runtimes`` is the profile's ordered ``runtimes`` list (None: no profile
    known, every artifact is a candidate). ``available`` maps a runtime to the
    devices this machine has for it (empty: runtime not installed).
    """
    artifacts = [a for a in manifest.artifacts if not a.profiles or hardware_profile in a.profiles]
    wanted: list[Candidate] = []
    for artifact in artifacts:
        entries = [e for e in profile_runtimes or []
                   if e.get("runtime") == artifact.runtime and e.get("precision") == artifact.precision]
        for device in [next((str(e[k]) for k in _DEVICE_KEYS if e.get(k)), "") for e in entries]:
            if Candidate(artifact, device) not in wanted:
                wanted.append(Candidate(artifact, device))
    if not wanted:
        # The profile names none of what the package offers: try everything rather than serve nothing.
        wanted = [Candidate(a) for a in artifacts]
    # An artifact asked for on the runtime's default device is also tried on any
    # accelerator present: ONNX Runtime's CUDA/TensorRT/OpenVINO providers, OpenVINO's GPU/NPU.
    default_devices = {"onnxruntime": "CPUExecutionProvider", "openvino": "CPU"}
    for candidate in list(wanted):
        runtime = candidate.artifact.runtime
        if runtime in default_devices and candidate.device == "":
            for device in available.get(runtime, []):
                extra = Candidate(candidate.artifact, device)
                if device != default_devices[runtime] and extra not in wanted:
                    wanted.append(extra)
    runnable: list[Candidate] = []
    skipped: list[RuntimeMeasurement] = []
    for candidate in wanted:
        devices = available.get(candidate.artifact.runtime, [])
        if not devices:
            skipped.append(candidate.measurement(reason=f"{candidate.artifact.runtime} is not installed"))
        elif candidate.device and candidate.device not in devices:
            skipped.append(candidate.measurement(reason=f"device {candidate.device} is not present"))
        else:
            runnable.append(candidate)
    return runnable, skipped


def golden_error(outputs: npt.NDArray[np.float32], expected: npt.NDArray[np.float32]) -> float:
    """Largest absolute difference; ``inf`` for a shape mismatch or any NaN/Inf (never "agrees")."""
    if outputs.shape != expected.shape or not np.all(np.isfinite(outputs)):
        return float("inf")
    return float(np.max(np.abs(outputs.astype(np.float64) - expected.astype(np.float64)))) if outputs.size else 0.0


def _load_golden(path: Path) -> tuple[npt.NDArray[np.generic], npt.NDArray[np.float32]]:
    with np.load(path, allow_pickle=False) as golden:
        return np.asarray(golden["inputs"]), np.asarray(golden["outputs"], dtype=np.float32)


def _input_dtype(manifest: PackageManifest) -> type[np.generic]:
    spec = manifest.preprocessing
    return np.float32 if spec.dtype == "float32" else np.uint8 if spec.dtype == "uint8" else np.int8


def self_test(
    candidate: Candidate, manifest: PackageManifest, package_dir: Path, *, threads: int
) -> tuple[RuntimeMeasurement, InferenceBackend | None, npt.NDArray[np.generic] | None]:
    """Load one candidate and check it against the golden vectors. Never raises.

    Returns the measurement (accepted or the reason it is not), the loaded backend
    when accepted, and the input to time it on.
    """
    artifact = candidate.artifact
    try:
        backend = load_backend(artifact, package_dir / artifact.file, threads=threads, device=candidate.device)
    except RuntimeLoadError as exc:
        return candidate.measurement(reason=str(exc)[:256]), None, None
    try:
        if artifact.golden_file is not None:
            inputs, expected = _load_golden(package_dir / artifact.golden_file)
            outputs = np.concatenate([backend.run(inputs[i : i + 1]) for i in range(len(inputs))])
            error: float | None = golden_error(outputs, expected)
            assert error is not None
            if not error <= artifact.golden_tolerance:
                return candidate.measurement(
                    max_abs_error=None if error == float("inf") else error,
                    reason=f"golden outputs disagree (max abs error {error:.3g} > {artifact.golden_tolerance:g})",
                ), None, None
            sample = inputs[:1]
        else:
            error = None
            sample = np.zeros(manifest.preprocessing.input_shape(1), dtype=_input_dtype(manifest))
        warmup = backend.run(sample)
        if manifest.detection is not None:
            # Imported here: agent.infer imports the update manager, which imports this module.
            from agent.infer.detect import check_output_shape

            problem = check_output_shape(tuple(warmup.shape), manifest.detection, len(manifest.labels))
            if problem is not None:
                return candidate.measurement(reason=problem[:256]), None, None
        elif warmup.shape[-1] != len(manifest.labels):
            return candidate.measurement(
                reason=f"outputs {warmup.shape[-1]} scores for {len(manifest.labels)} labels"), None, None
    except Exception as exc:  # a runtime failing on the golden input is a failed self-test, not a crash
        return candidate.measurement(reason=f"self-test failed: {exc}"[:256]), None, None
    return candidate.measurement(
        accepted=True,
        reason="golden outputs agree" if error is not None else "no golden vectors; shape checked",
        max_abs_error=error,
    ), backend, sample


def time_backend(backend: InferenceBackend, sample: npt.NDArray[np.generic], *, runs: int) -> float:
    """Median latency of ``runs`` inferences on ``sample`` after one warm-up, in milliseconds."""
    backend.run(sample)
    timings_ms = []
    for _ in range(max(1, runs)):
        started = time.perf_counter()
        backend.run(sample)
        timings_ms.append((time.perf_counter() - started) * 1000.0)
    return round(float(np.median(timings_ms)), 4)


def fastest(measurements: Sequence[RuntimeMeasurement]) -> int | None:
    """Index of the accepted measurement with the lowest median latency (None: none accepted)."""
    accepted = [(m.median_latency_ms, i) for i, m in enumerate(measurements)
                if m.accepted and m.median_latency_ms is not None]
    return min(accepted)[1] if accepted else None
