"""A simulated fleet for rollout tests, built on ``tools/fleet_sim.py``.

:class:`RolloutSim` extends the scale engineer's :class:`~tools.fleet_sim.FleetSimulator`
(protocol-faithful MQTT devices on one event loop) with what rollouts need and the
simulator does not do yet:

* **shadow commands** (``DeployCommand.mode == "shadow"``): the device acknowledges
  the job, keeps serving its active model, and reports ``TelemetryReport.shadow``;
* **real-model telemetry** through a :class:`ModelOracle`: for model versions the
  oracle knows, each window's frames, confidences, class counts, latencies and
  invalid (NaN) outputs come from running the real ONNX model (loaded with the
  agent's own ``load_model``) on synthetic camera frames, and the shadow results
  come from :class:`agent.infer.shadow.ShadowRunner` running the candidate on the
  same frames the active model saw;
* a log of every valid command each device received, to prove "never dispatched
  twice".

The base simulator takes one hardware profile per instance, so :class:`RolloutFleet`
runs one simulator per profile.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.capture.scenes import SyntheticSource
from agent.contract import (
    MANIFEST_FILE,
    ContractError,
    DeployCommand,
    JobState,
    PackageManifest,
    ShadowWindow,
    TelemetryReport,
    parse_command,
)
from agent.infer.engine import LoadedModel, load_model
from agent.infer.shadow import ShadowRunner, run_candidate
from tools.fleet_sim import DeviceView, FleetSimulator, JobStep, ModelBehaviour

__all__ = ["ModelOracle", "RolloutFleet", "RolloutSim"]


@dataclass(frozen=True)
class FrameOutcome:
    label: str | None  # None: the model produced NaN/Inf for this frame
    confidence: float
    latency_ms: float


class ModelOracle:
    """Real model outputs on a fixed bank of synthetic frames, per model version."""

    def __init__(self, *, frames: int = 96, seed: int = 11) -> None:
        source = SyntheticSource(seed=seed, width=160, height=120, frames_per_scene=1)
        self.frames: list[npt.NDArray[np.uint8]] = []
        for _ in range(frames):
            frame = source.read()
            assert frame is not None
            self.frames.append(frame.copy())
        self.outcomes: dict[str, list[FrameOutcome]] = {}
        self.models: dict[str, LoadedModel] = {}  # package id -> loaded model
        self._lock = threading.Lock()

    def add_package(self, package_dir: Path) -> str:
        """Load a package the way the agent does and record its outputs. Returns its model version."""
        manifest = PackageManifest.from_bytes((package_dir / MANIFEST_FILE).read_bytes())
        model = load_model(manifest, package_dir, threads=1)
        outcomes = []
        for frame in self.frames:
            try:
                label, confidence, latency_ms = run_candidate(model, frame)
                outcomes.append(FrameOutcome(label, confidence, latency_ms))
            except ValueError:
                outcomes.append(FrameOutcome(None, 0.0, 0.0))
        with self._lock:
            self.models[manifest.package_id] = model
            self.outcomes[manifest.model_version] = outcomes
        return manifest.model_version

    def knows(self, model_version: str | None) -> bool:
        return model_version is not None and model_version in self.outcomes


@dataclass
class _Shadow:
    package_id: str
    model_version: str
    ends_at: float
    sample_fraction: float
    runner: ShadowRunner | None = None  # set when the oracle has the candidate model
    frames: int = 0
    agreements: int = 0


@dataclass
class CommandLog:
    """Every valid command a device received, in order."""

    commands: list[tuple[str, DeployCommand]] = field(default_factory=list)

    def for_package(self, package_id: str, *, mode: str = "install") -> Counter[str]:
        return Counter(d for d, c in self.commands if c.package_id == package_id and c.mode == mode)


class RolloutSim(FleetSimulator):
    """:class:`FleetSimulator` plus shadow mode, real-model telemetry and a command log."""

    def __init__(self, *args: Any, oracle: ModelOracle | None = None, log: CommandLog | None = None,
                 shadow_agreement: dict[str, float] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.oracle = oracle
        self.log = log or CommandLog()
        # Protocol-mode agreement per candidate version when the oracle does not know it.
        self.shadow_agreement = dict(shadow_agreement or {})
        self._shadows: dict[str, _Shadow] = {}
        self._offsets: dict[str, int] = {}
        self._rng = random.Random(5)

    # -- commands --------------------------------------------------------------
    def _on_command(self, device: Any, payload: bytes) -> None:
        try:
            command = parse_command(payload)
        except ContractError:
            super()._on_command(device, payload)
            return
        if command.device_id == device.device_id:
            self.log.commands.append((device.device_id, command))
        if command.mode != "shadow":
            self._shadows.pop(device.device_id, None)  # an install ends any shadow phase
            super()._on_command(device, payload)
            return
        if command.seq <= device.last_command_seq:
            self._report_job(device, command, JobStep(JobState.REJECTED, 0.0, "rollback", "replayed"))
            return
        device.last_command_seq = command.seq
        shadow = _Shadow(command.package_id, command.model_version, time.monotonic() + command.shadow_duration_s,
                         command.shadow_sample_fraction)
        if self.oracle is not None and command.package_id in self.oracle.models:
            shadow.runner = ShadowRunner(self.oracle.models[command.package_id],
                                         sample_fraction=command.shadow_sample_fraction,
                                         duration_s=command.shadow_duration_s, rng=random.Random(command.seq))
        for state in (JobState.RECEIVED, JobState.DOWNLOADING, JobState.VERIFYING, JobState.SUCCEEDED):
            self._report_job(device, command, JobStep(state, 0.0))
        self._shadows[device.device_id] = shadow

    # -- telemetry ---------------------------------------------------------------
    def _synthetic_window(self, device: Any) -> dict[str, Any]:
        if self.oracle is None or not self.oracle.knows(device.model_version):
            window = super()._synthetic_window(device)
            window["_indices"] = []
            return window
        outcomes = self.oracle.outcomes[device.model_version]
        behaviour: ModelBehaviour = self.behaviours.get(device.model_version, self.default_behaviour)
        count = max(1, round(behaviour.fps * self.telemetry_interval_s))
        start = self._offsets.get(device.device_id, hash(device.device_id) % len(outcomes))
        indices = [(start + k) % len(outcomes) for k in range(count)]
        self._offsets[device.device_id] = (start + count) % len(outcomes)
        good = [outcomes[i] for i in indices if outcomes[i].label is not None]
        invalid = len(indices) - len(good)
        latencies = sorted(o.latency_ms for o in good)
        frames = len(good)
        return {
            "window_s": self.telemetry_interval_s, "frames": frames, "fps": round(frames / self.telemetry_interval_s, 2),
            "p50_latency_ms": round(latencies[len(latencies) // 2], 3) if latencies else None,
            "p95_latency_ms": round(latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))], 3)
            if latencies else None,
            "mean_confidence": round(sum(o.confidence for o in good) / frames, 4) if frames else None,
            "class_counts": dict(Counter(o.label for o in good if o.label)), "inference_errors": 0,
            "invalid_outputs": invalid, "cpu_percent": 20.0, "memory_mb": 150.0, "_indices": indices,
        }

    def _shadow_window(self, device: Any, indices: list[int]) -> ShadowWindow | None:
        shadow = self._shadows.get(device.device_id)
        if shadow is None:
            return None
        if time.monotonic() > shadow.ends_at:
            del self._shadows[device.device_id]
            return None
        if shadow.runner is not None and self.oracle is not None and self.oracle.knows(device.model_version):
            active = self.oracle.outcomes[device.model_version]
            for index in indices:
                outcome = active[index]
                if outcome.label is not None:
                    shadow.runner.observe(self.oracle.frames[index], outcome.label, outcome.latency_ms)
            return shadow.runner.take_window()
        # Protocol mode: a configured agreement rate on the frames a real device would sample.
        behaviour: ModelBehaviour = self.behaviours.get(device.model_version or "", self.default_behaviour)
        frames = sum(1 for _ in range(round(behaviour.fps * self.telemetry_interval_s))
                     if self._rng.random() < shadow.sample_fraction)
        agreement = self.shadow_agreement.get(shadow.model_version, 0.97)
        return ShadowWindow(package_id=shadow.package_id, model_version=shadow.model_version, frames=frames,
                            agreements=sum(1 for _ in range(frames) if self._rng.random() < agreement),
                            candidate_p95_latency_ms=behaviour.p50_latency_ms * 1.6,
                            active_p95_latency_ms=behaviour.p50_latency_ms * 1.6)

    def _send_telemetry(self, device: Any) -> None:
        # The base class builds the report inline; this adds the shadow window to it.
        window = self._synthetic_window(device)
        indices = window.pop("_indices")
        device.report_seq += 1
        report = TelemetryReport(
            device_id=device.device_id, model_version=device.model_version, package_id=device.package_id,
            runtime=device.runtime, report_seq=device.report_seq, rejected_commands=device.rejected_commands,
            shadow=self._shadow_window(device, indices), **window,
        )
        device.generated += 1

        def acked() -> None:
            device.acked += 1

        self._publish(device, self.topics.telemetry(device.device_id), report.to_bytes(), on_ack=acked)


def purge_sessions(broker_url: str, device_ids: list[str]) -> None:
    """Connect as each simulated device once with a clean session, which discards its old one."""
    import paho.mqtt.client as mqtt

    from agent.contract.broker_url import parse_broker_url

    address = parse_broker_url(broker_url)
    for device_id in device_ids:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"ef-agent-{device_id}",
                             clean_session=True, protocol=mqtt.MQTTv311)
        client.connect(address.host, address.port, keepalive=10)
        client.loop_start()
        deadline = time.monotonic() + 5
        while not client.is_connected() and time.monotonic() < deadline:
            time.sleep(0.005)
        client.disconnect()
        client.loop_stop()


class RolloutFleet:
    """One :class:`RolloutSim` per hardware profile, sharing an oracle and a command log."""

    def __init__(self, broker_url: str, topic_prefix: str, profiles: dict[str, list[str]], *,
                 initial: dict[str, tuple[str, str]], oracle: ModelOracle | None = None,
                 telemetry_interval_s: float = 0.5, **kwargs: Any) -> None:
        """``initial``: hardware profile -> (model version, package id) every device starts on."""
        self.log = CommandLog()
        self.sims = {
            profile: RolloutSim(broker_url, device_ids, topic_prefix=topic_prefix, hardware_profile=profile,
                                initial_model_version=initial[profile][0], initial_package_id=initial[profile][1],
                                oracle=oracle, log=self.log, telemetry_interval_s=telemetry_interval_s,
                                record_message_ids=False, seed=index, **kwargs)
            for index, (profile, device_ids) in enumerate(profiles.items())
        }
        self._owner = {d: p for p, ids in profiles.items() for d in ids}
        self.broker_url = broker_url

    def start(self) -> None:
        # Device ids repeat across tests on the shared broker, and devices keep persistent
        # sessions: drop any earlier session first, or its queued commands would arrive here.
        purge_sessions(self.broker_url, list(self._owner))
        for sim in self.sims.values():
            sim.start()

    def stop(self) -> None:
        for sim in self.sims.values():
            sim.stop(graceful=False, purge_sessions=True)

    def sim_of(self, device_id: str) -> RolloutSim:
        return self.sims[self._owner[device_id]]

    def device(self, device_id: str) -> DeviceView:
        return self.sim_of(device_id).device(device_id)

    def devices(self) -> list[DeviceView]:
        return [view for sim in self.sims.values() for view in sim.devices()]

    def running(self, device_ids: Iterable[str] | None = None) -> dict[str, str | None]:
        wanted = set(device_ids) if device_ids is not None else None
        return {v.device_id: v.running_package_id for v in self.devices()
                if wanted is None or v.device_id in wanted}
