"""Fleet simulator: thousands of protocol-faithful EdgeFleet devices on one event loop.

Every simulated device is its own MQTT session (client id ``ef-agent-<device_id>``,
persistent session, retained ``status`` backed by a retained "offline" Last Will,
telemetry and job reports at QoS 1 built with the agent's own contract models,
deploy commands parsed with ``agent.contract.parse_command``). Sessions are
multiplexed on one asyncio loop (:mod:`tools.mqtt_async`), so 5,000 devices cost
one thread, not 5,000. For more, run several processes (``--shard i/k``).

Library API
-----------
::

    from tools.fleet_sim import FleetSimulator, DeployPlan, ModelBehaviour

    sim = FleetSimulator("mqtt://127.0.0.1:1883", [f"sim-{i:04d}" for i in range(200)],
                         topic_prefix="ef/v1", telemetry_interval_s=1.0)
    sim.start()                              # connects everyone, waits for CONNACKs
    sim.go_offline("sim-0003", mode="network")   # link cut: Last Will fires, reports buffer
    sim.go_online("sim-0003")                # reconnects, buffered reports are replayed
    sim.set_deploy_hook(lambda device, command: DeployPlan.fail("installing", "install_failed"))
    sim.set_device_hook("sim-0007", lambda device, command: DeployPlan.ignore())
    sim.set_behaviour("shapes-2", ModelBehaviour(mean_confidence=0.4, error_rate=0.2))
    sim.stop_telemetry(); sim.wait_drained()  # every report acknowledged by the broker
    stats = sim.stats()                      # FleetStats: generated, acked, dropped, jobs ...
    sim.telemetry_message_ids()              # ids of every telemetry report generated
    sim.stop()

* ``go_offline(device_id, mode=...)``: ``"network"`` drops TCP (Last Will fires) and
  the device keeps measuring into its buffer; ``"crash"`` drops TCP and stops the
  device until ``go_online`` (its buffer survives, like the agent's disk buffer);
  ``"graceful"`` publishes the offline status and sends DISCONNECT.
* Deploy hooks decide how a device reacts to a valid deploy command: a callable
  ``(DeviceView, DeployCommand) -> DeployPlan``. ``DeployPlan.succeed()`` (the
  default), ``.fail(at_state, error_code)``, ``.reject(error_code)``, ``.ignore()``
  (never answers: a job stuck in progress), ``.crash(at_state)`` (reports up to
  ``at_state`` then drops off the network without a word), or a custom list of
  ``JobStep``\\ s. Hooks run on the simulator's loop thread: keep them quick.
  Before the hook is asked, the device does what the real agent does: it refuses
  commands for another device, expired commands and replayed sequence numbers
  (reporting ``rejected`` with ``bad_signature``/``rollback`` where the agent would),
  and answers a redelivered command for the package it already runs with ``succeeded``.
  Director signatures are not verified (protocol mode has no keys): use the real
  agent where signature handling is under test.
* ``ModelBehaviour`` shapes protocol-mode telemetry per model version (confidence,
  latency, error rate, fps), so a rollout test can make a candidate look bad.
* Inferring mode (``inferring=[device ids]``, a few dozen at most): those devices
  enroll (``inferring_enroll(device_id, state_dir)`` returns the agent config entries
  enrollment produced, e.g. ``tests.support.fleet.enroll_agent``; the TUF root in
  ``tuf_root_file`` is what they trust), then really download and verify each package
  through TUF with the agent's installer from ``inferring_api_url``, load it with the
  agent's runtime, and run it on synthetic frames at ``inferring_fps``; their
  telemetry (confidence, class counts, latency, errors: a NaN output counts as an
  error) comes from the real model. Needs the ``agent`` extra (onnxruntime, opencv).

CLI
---
``python tools/fleet_sim.py --broker mqtt://127.0.0.1:1883 --devices 1000 --seconds 60
[--prefix ef/v1] [--interval 1] [--register http://127.0.0.1:8000] [--shard 0/2]
[--json-out stats.json]``. Prints one summary line at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import functools
import heapq
import json
import logging
import math
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.contract import (
    ContractError,
    DeployCommand,
    DeviceState,
    FrameTotals,
    JobState,
    JobStatusReport,
    StatusReport,
    TelemetryReport,
    Topics,
    parse_command,
)
from agent.contract.broker_url import parse_broker_url
from tools.mqtt_async import MqttClient, Will

log = logging.getLogger("fleet_sim")

__all__ = [
    "DeployHook",
    "DeployPlan",
    "DeviceMode",
    "DeviceView",
    "FleetSimulator",
    "FleetStats",
    "JobStep",
    "ModelBehaviour",
]

SIM_AGENT_VERSION = "sim-1"
SCENE_LABELS = ("circle", "square", "triangle", "cross")
T = TypeVar("T")


class DeviceMode(StrEnum):
    PROTOCOL = "protocol"  # synthetic numbers, no model: for scale
    INFERRING = "inferring"  # real download, verification and inference: for realism


@dataclass(frozen=True)
class ModelBehaviour:
    """How a model version looks in protocol-mode telemetry."""

    mean_confidence: float = 0.9
    confidence_sd: float = 0.05
    p50_latency_ms: float = 4.0
    error_rate: float = 0.0
    fps: float = 10.0


@dataclass(frozen=True)
class JobStep:
    """Report ``state`` after ``delay_s`` seconds (with an error code for failures)."""

    state: JobState
    delay_s: float = 0.05
    error_code: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class DeployPlan:
    """What a device does with one deploy command. Build with the class methods."""

    steps: tuple[JobStep, ...]
    # After the last step: drop off the network without a word (a crash mid-install).
    crash_after: bool = False

    @classmethod
    def succeed(cls, step_delay_s: float = 0.05) -> DeployPlan:
        states = (JobState.DOWNLOADING, JobState.VERIFYING, JobState.INSTALLING, JobState.SUCCEEDED)
        return cls(tuple(JobStep(s, step_delay_s) for s in states))

    @classmethod
    def fail(cls, at: JobState | str = JobState.INSTALLING, error_code: str = "install_failed",
             step_delay_s: float = 0.05) -> DeployPlan:
        order = (JobState.DOWNLOADING, JobState.VERIFYING, JobState.INSTALLING)
        at = JobState(at)
        before = order[: order.index(at) + 1] if at in order else ()
        steps = [JobStep(s, step_delay_s) for s in before]
        steps.append(JobStep(JobState.FAILED, step_delay_s, error_code, f"simulated failure: {error_code}"))
        return cls(tuple(steps))

    @classmethod
    def reject(cls, error_code: str = "incompatible_package") -> DeployPlan:
        return cls((JobStep(JobState.REJECTED, 0.0, error_code, f"simulated rejection: {error_code}"),))

    @classmethod
    def ignore(cls) -> DeployPlan:
        return cls(())

    @classmethod
    def crash(cls, at: JobState | str = JobState.DOWNLOADING, step_delay_s: float = 0.05) -> DeployPlan:
        order = (JobState.DOWNLOADING, JobState.VERIFYING, JobState.INSTALLING)
        at = JobState(at)
        return cls(tuple(JobStep(s, step_delay_s) for s in order[: order.index(at) + 1]), crash_after=True)


@dataclass(frozen=True)
class DeviceView:
    """A snapshot of one simulated device, safe to hand to hooks and callers."""

    device_id: str
    mode: DeviceMode
    hardware_profile: str
    connected: bool
    running: bool
    running_model_version: str | None
    running_package_id: str | None
    runtime: str | None
    last_command_seq: int
    jobs: dict[str, str]
    buffered: int
    telemetry_generated: int
    telemetry_acked: int


DeployHook = Callable[[DeviceView, DeployCommand], DeployPlan]


@dataclass
class FleetStats:
    devices: int = 0
    connected: int = 0
    connects: int = 0
    telemetry_generated: int = 0
    telemetry_acked: int = 0
    telemetry_dropped: int = 0
    resent: int = 0
    buffered: int = 0
    commands_received: int = 0
    commands_rejected: int = 0
    job_reports: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, object]:
        return {**self.__dict__, "job_reports": dict(self.job_reports)}


def default_deploy_hook(device: DeviceView, command: DeployCommand) -> DeployPlan:
    return DeployPlan.succeed()


class _SimDevice:
    def __init__(self, device_id: str, mode: DeviceMode, hardware_profile: str, seed: int) -> None:
        self.device_id = device_id
        self.mode = mode
        self.hardware_profile = hardware_profile
        self.rng = random.Random(seed)
        self.client: MqttClient | None = None
        self.running = True  # False while crashed/powered off: no telemetry is produced
        self.model_version: str | None = None
        self.package_id: str | None = None
        self.runtime: str | None = None
        self.last_command_seq = -1
        self.jobs: dict[str, str] = {}
        self.hook: DeployHook | None = None
        self.report_seq = 0
        self.totals = FrameTotals()
        self.rejected_commands = 0
        self.generated = 0
        self.acked = 0
        self.connected_once = asyncio.Event()
        self.inference: _InferringRuntime | None = None

    def view(self) -> DeviceView:
        client = self.client
        return DeviceView(
            device_id=self.device_id, mode=self.mode, hardware_profile=self.hardware_profile,
            connected=bool(client and client.connected), running=self.running,
            running_model_version=self.model_version, running_package_id=self.package_id, runtime=self.runtime,
            last_command_seq=self.last_command_seq, jobs=dict(self.jobs),
            buffered=client.buffered if client else 0, telemetry_generated=self.generated,
            telemetry_acked=self.acked,
        )


class FleetSimulator:
    """Simulated devices on a background event-loop thread. See the module docstring."""

    def __init__(
        self,
        broker_url: str,
        device_ids: Iterable[str],
        *,
        topic_prefix: str = "ef/v1",
        telemetry_interval_s: float = 1.0,
        hardware_profile: str = "x86-64-avx2",
        initial_model_version: str | None = None,
        initial_package_id: str | None = None,
        deploy_hook: DeployHook | None = None,
        behaviours: dict[str, ModelBehaviour] | None = None,
        default_behaviour: ModelBehaviour = ModelBehaviour(),
        inferring: Iterable[str] = (),
        inferring_state_dir: Path | None = None,
        inferring_api_url: str | None = None,
        inferring_enroll: Callable[[str, Path], Mapping[str, object]] | None = None,
        inferring_fps: float = 2.0,
        record_message_ids: bool = True,
        connect_rate_per_s: float = 1000.0,
        keepalive_s: int = 60,
        max_inflight: int = 20,
        max_buffered: int = 10_000,
        reconnect_max_s: float = 10.0,
        seed: int = 0,
    ) -> None:
        self.address = parse_broker_url(broker_url)
        self.topics = Topics(topic_prefix)
        self.telemetry_interval_s = telemetry_interval_s
        self.deploy_hook: DeployHook = deploy_hook or default_deploy_hook
        self.behaviours = dict(behaviours or {})
        self.default_behaviour = default_behaviour
        self.record_message_ids = record_message_ids
        self.connect_rate_per_s = connect_rate_per_s
        self.keepalive_s = keepalive_s
        self.max_inflight = max_inflight
        self.max_buffered = max_buffered
        self.reconnect_max_s = reconnect_max_s
        self.inferring_fps = inferring_fps
        self.inferring_state_dir = inferring_state_dir
        self.inferring_api_url = (inferring_api_url or "").rstrip("/")
        self.inferring_enroll = inferring_enroll
        self._enrollments: dict[str, Mapping[str, object]] = {}
        inferring_ids = set(inferring)
        if inferring_ids and (inferring_state_dir is None or not inferring_api_url or inferring_enroll is None):
            raise ValueError("inferring devices need inferring_state_dir, inferring_api_url and inferring_enroll")
        self._devices: dict[str, _SimDevice] = {}
        for index, device_id in enumerate(device_ids):
            mode = DeviceMode.INFERRING if device_id in inferring_ids else DeviceMode.PROTOCOL
            device = _SimDevice(device_id, mode, hardware_profile, seed * 1_000_003 + index)
            if mode is DeviceMode.PROTOCOL:
                device.model_version, device.package_id = initial_model_version, initial_package_id
                device.runtime = "onnxruntime" if initial_model_version else None
            self._devices[device_id] = device
        unknown = inferring_ids - self._devices.keys()
        if unknown:
            raise ValueError(f"inferring devices not in the fleet: {sorted(unknown)[:5]}")
        self.generated_ids: list[str] = []
        self.acked_ids: set[str] = set()
        self._commands_received = 0
        self._job_reports: Counter[str] = Counter()
        self._telemetry_on = True
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fleet-sim", daemon=True)
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="fleet-sim-infer")
        self._ticker: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- lifecycle -------------------------------------------------------------
    @property
    def device_ids(self) -> list[str]:
        return list(self._devices)

    def start(self, *, wait_connected: bool = True, timeout_s: float = 120.0) -> None:
        """Connect every device (paced at ``connect_rate_per_s``) and start reporting.

        Raises:
            TimeoutError: not every device connected within ``timeout_s`` (when waiting).
        """
        self._enroll_inferring()
        self._thread.start()
        self._call(self._start(), timeout_s=timeout_s + 5)
        if wait_connected:
            self._call(self._wait_all_connected(), timeout_s=timeout_s + 5, inner_timeout_s=timeout_s)
        # Reporting starts once the fleet is up, so a slow connect phase causes no backlog burst.
        self._call(self._async(self._start_ticker))

    def _enroll_inferring(self) -> None:
        assert self.inferring_enroll is not None or not any(
            d.mode is DeviceMode.INFERRING for d in self._devices.values())
        for device in self._devices.values():
            if device.mode is DeviceMode.INFERRING and self.inferring_enroll is not None:
                assert self.inferring_state_dir is not None
                state_dir = self.inferring_state_dir / device.device_id
                state_dir.mkdir(parents=True, exist_ok=True)
                self._enrollments[device.device_id] = self.inferring_enroll(device.device_id, state_dir)

    def _start_ticker(self) -> None:
        self._ticker = self._loop.create_task(self._telemetry_ticker())

    def stop(self, *, graceful: bool = True, purge_sessions: bool = False) -> None:
        """Stop every device (graceful: offline status + DISCONNECT; else TCP drop) and the loop.

        ``purge_sessions``: afterwards connect each device once with a clean session, so a
        shared broker does not keep thousands of persistent sessions from a benchmark.
        """
        if not self._thread.is_alive():
            return
        try:
            self._call(self._stop(graceful), timeout_s=60)
            if purge_sessions:
                self._call(self._purge(), timeout_s=300)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._executor.shutdown(wait=False, cancel_futures=True)

    # -- control -----------------------------------------------------------------
    def go_offline(self, device_id: str, mode: str = "network") -> None:
        """Take one device off the broker. ``mode``: ``network``, ``crash`` or ``graceful``."""
        if mode not in ("network", "crash", "graceful"):
            raise ValueError(f"mode must be network, crash or graceful, not {mode!r}")
        self._call(self._go_offline(self._device(device_id), mode))

    def go_online(self, device_id: str) -> None:
        """Power on / restore the link: reconnect, republish status, replay the buffer."""
        self._call(self._go_online(self._device(device_id)))

    def set_deploy_hook(self, hook: DeployHook) -> None:
        self.deploy_hook = hook

    def set_device_hook(self, device_id: str, hook: DeployHook | None) -> None:
        self._device(device_id).hook = hook

    def set_behaviour(self, model_version: str, behaviour: ModelBehaviour) -> None:
        self.behaviours[model_version] = behaviour

    def stop_telemetry(self) -> None:
        """Stop generating telemetry (buffers still drain); ``resume_telemetry`` restarts it."""
        self._telemetry_on = False

    def resume_telemetry(self) -> None:
        self._telemetry_on = True

    def wait_drained(self, timeout_s: float = 60.0) -> None:
        """Wait until every generated report is acknowledged by the broker.

        Raises:
            TimeoutError: reports are still buffered or in flight after ``timeout_s``.
        """
        self._call(self._wait_drained(), timeout_s=timeout_s + 5, inner_timeout_s=timeout_s)

    def stats(self) -> FleetStats:
        return self._call(self._stats())

    def device(self, device_id: str) -> DeviceView:
        device = self._device(device_id)
        return self._call(self._async(device.view))

    def devices(self) -> list[DeviceView]:
        return self._call(self._async(lambda: [d.view() for d in self._devices.values()]))

    def telemetry_message_ids(self) -> list[str]:
        """Ids of every telemetry report generated (requires ``record_message_ids``)."""
        return self._call(self._async(lambda: list(self.generated_ids)))

    # -- plumbing ------------------------------------------------------------------
    def _device(self, device_id: str) -> _SimDevice:
        try:
            return self._devices[device_id]
        except KeyError:
            raise KeyError(f"no simulated device {device_id!r}") from None

    @staticmethod
    async def _async(fn: Callable[[], T]) -> T:
        return fn()

    def _call(self, coroutine: Coroutine[Any, Any, T], *, timeout_s: float = 30.0,
              inner_timeout_s: float | None = None) -> T:
        if inner_timeout_s is not None:
            coroutine = asyncio.wait_for(coroutine, inner_timeout_s)
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return future.result(timeout=timeout_s)

    def _spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        task = self._loop.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- on the loop thread ----------------------------------------------------------
    async def _start(self) -> None:
        pause_s = 1.0 / self.connect_rate_per_s
        for device in self._devices.values():
            self._connect(device)
            await asyncio.sleep(pause_s)

    def _connect(self, device: _SimDevice) -> None:
        offline = StatusReport(device_id=device.device_id, state=DeviceState.OFFLINE).to_bytes()
        client = device.client
        if client is None:
            client = MqttClient(
                f"ef-agent-{device.device_id}", host=self.address.host, port=self.address.port,
                clean_session=False, keepalive_s=self.keepalive_s,
                will=Will(self.topics.status(device.device_id), offline, qos=1, retain=True),
                max_inflight=self.max_inflight, max_buffered=self.max_buffered,
                reconnect_max_s=self.reconnect_max_s,
                on_message=functools.partial(self._on_command_message, device),
                on_connect=functools.partial(self._on_connect_flag, device),
            )
            client.subscribe(self.topics.commands(device.device_id), 1)
            device.client = client
        client.start()

    def _on_command_message(self, device: _SimDevice, topic: str, payload: bytes) -> None:
        self._on_command(device, payload)

    def _on_connect_flag(self, device: _SimDevice, session_present: bool) -> None:
        self._on_connect(device)

    def _on_connect(self, device: _SimDevice) -> None:
        # Like the agent: the retained status always names what really runs.
        self._publish(device, self.topics.status(device.device_id), self._status(device).to_bytes(), retain=True)
        device.connected_once.set()

    def _status(self, device: _SimDevice) -> StatusReport:
        return StatusReport(
            device_id=device.device_id, state=DeviceState.ONLINE, agent_version=SIM_AGENT_VERSION,
            hardware_profile=device.hardware_profile, running_model_version=device.model_version,
            running_package_id=device.package_id, runtime=device.runtime, install_state="idle",
        )

    def _publish(self, device: _SimDevice, topic: str, payload: bytes, *, retain: bool = False,
                 on_ack: Callable[[], None] | None = None) -> None:
        assert device.client is not None
        device.client.publish(topic, payload, qos=1, retain=retain, on_ack=on_ack)

    async def _wait_all_connected(self) -> None:
        await asyncio.gather(*(d.connected_once.wait() for d in self._devices.values()))

    async def _stop(self, graceful: bool) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        for task in list(self._tasks):
            task.cancel()
        coroutines = []
        for device in self._devices.values():
            if device.client is None:
                continue
            if graceful and device.client.connected:
                offline = StatusReport(device_id=device.device_id, state=DeviceState.OFFLINE).to_bytes()
                self._publish(device, self.topics.status(device.device_id), offline, retain=True)
                coroutines.append(self._disconnect_after_flush(device.client))
            else:
                coroutines.append(device.client.abort())
        await asyncio.gather(*coroutines, return_exceptions=True)
        # Reconnect loops and keep-alive timers end with their sessions; cancel stragglers.
        current = asyncio.current_task()
        leftovers = [task for task in asyncio.all_tasks() if task is not current]
        for task in leftovers:
            task.cancel()
        await asyncio.gather(*leftovers, return_exceptions=True)

    async def _purge(self) -> None:
        async def purge_one(device: _SimDevice) -> None:
            client = MqttClient(f"ef-agent-{device.device_id}", host=self.address.host, port=self.address.port,
                                clean_session=True, keepalive_s=self.keepalive_s)
            connected = asyncio.Event()
            client.on_connect = lambda present: connected.set()
            client.start()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(connected.wait(), timeout=10)
            await client.disconnect()

        devices = list(self._devices.values())
        for start in range(0, len(devices), 200):  # a few hundred at a time: no connect storm
            await asyncio.gather(*(purge_one(d) for d in devices[start : start + 200]), return_exceptions=True)

    @staticmethod
    async def _disconnect_after_flush(client: MqttClient, timeout_s: float = 5.0) -> None:
        deadline = time.monotonic() + timeout_s
        while client.buffered and client.connected and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await client.disconnect()

    async def _go_offline(self, device: _SimDevice, mode: str) -> None:
        client = device.client
        if client is None:
            return
        if mode == "graceful":
            device.running = False
            offline = StatusReport(device_id=device.device_id, state=DeviceState.OFFLINE).to_bytes()
            self._publish(device, self.topics.status(device.device_id), offline, retain=True)
            await self._disconnect_after_flush(client)
        else:
            device.running = mode == "network"
            await client.abort(stay_offline=True)

    async def _go_online(self, device: _SimDevice) -> None:
        device.running = True
        self._connect(device)

    async def _wait_drained(self) -> None:
        while any(d.client is not None and d.client.buffered for d in self._devices.values()):
            await asyncio.sleep(0.1)

    async def _stats(self) -> FleetStats:
        stats = FleetStats(devices=len(self._devices), commands_received=self._commands_received,
                           job_reports=Counter(self._job_reports))
        for device in self._devices.values():
            stats.telemetry_generated += device.generated
            stats.telemetry_acked += device.acked
            stats.commands_rejected += device.rejected_commands
            client = device.client
            if client is not None:
                stats.connected += client.connected
                stats.connects += client.connects
                stats.telemetry_dropped += client.dropped
                stats.resent += client.resent
                stats.buffered += client.buffered
        return stats

    # -- telemetry -------------------------------------------------------------------
    async def _telemetry_ticker(self) -> None:
        """One timer for the whole fleet: a heap of (due time, device), phases spread evenly."""
        interval = self.telemetry_interval_s
        now = time.monotonic()
        devices = list(self._devices.values())
        heap = [(now + interval * (i + 1) / len(devices), i) for i in range(len(devices))]
        heapq.heapify(heap)
        while True:
            due, index = heap[0]
            wait_s = due - time.monotonic()
            if wait_s > 0:
                await asyncio.sleep(min(wait_s, 0.05))
                continue
            heapq.heapreplace(heap, (due + interval, index))
            device = devices[index]
            if not self._telemetry_on or not device.running or device.client is None:
                continue
            try:
                self._send_telemetry(device)
            except Exception:  # one device's bad numbers must not stop the fleet
                log.exception("telemetry for %s failed", device.device_id)

    def _send_telemetry(self, device: _SimDevice) -> None:
        if device.mode is DeviceMode.INFERRING:
            if device.inference is None:
                return  # nothing installed yet: the agent reports nothing either
            window = device.inference.take_window()
        else:
            window = self._synthetic_window(device)
        device.report_seq += 1
        report = TelemetryReport(
            device_id=device.device_id, model_version=device.model_version, package_id=device.package_id,
            runtime=device.runtime, report_seq=device.report_seq, rejected_commands=device.rejected_commands,
            frame_totals=device.totals, **window,
        )
        device.generated += 1
        message_id = report.message_id
        if self.record_message_ids:
            self.generated_ids.append(message_id)

        def acked() -> None:
            device.acked += 1
            if self.record_message_ids:
                self.acked_ids.add(message_id)

        self._publish(device, self.topics.telemetry(device.device_id), report.to_bytes(), on_ack=acked)

    def _synthetic_window(self, device: _SimDevice) -> dict[str, Any]:
        behaviour = self.behaviours.get(device.model_version or "", self.default_behaviour)
        rng = device.rng
        window_s = self.telemetry_interval_s
        if device.model_version is None:
            return {"window_s": window_s, "frames": 0, "fps": 0.0, "cpu_percent": round(rng.uniform(1, 3), 1),
                    "memory_mb": 80.0}
        expected = behaviour.fps * window_s
        attempted = max(0, round(rng.gauss(expected, math.sqrt(expected) if expected else 0)))
        errors = sum(1 for _ in range(attempted) if rng.random() < behaviour.error_rate)
        frames = attempted - errors
        counts: Counter[str] = Counter(rng.choice(SCENE_LABELS) for _ in range(min(frames, 200)))
        p50 = max(0.1, rng.lognormvariate(math.log(behaviour.p50_latency_ms), 0.1))
        sd = behaviour.confidence_sd / math.sqrt(max(frames, 1))
        confidence = min(1.0, max(0.0, rng.gauss(behaviour.mean_confidence, sd))) if frames else None
        device.totals = FrameTotals(
            captured=device.totals.captured + attempted,
            processed=device.totals.processed + frames,
            inference_errors_total=device.totals.inference_errors_total + errors,
        )
        return {
            "window_s": window_s, "frames": frames, "fps": round(frames / window_s, 2),
            "p50_latency_ms": round(p50, 3) if frames else None,
            "p95_latency_ms": round(p50 * 1.6, 3) if frames else None,
            "mean_confidence": round(confidence, 4) if confidence is not None else None,
            "class_counts": dict(counts), "inference_errors": errors,
            "cpu_percent": round(min(100.0, 15 + behaviour.fps * behaviour.p50_latency_ms / 10), 1),
            "memory_mb": round(150 + rng.uniform(-5, 5), 1),
        }

    # -- commands and jobs -------------------------------------------------------------
    def _on_command(self, device: _SimDevice, payload: bytes) -> None:
        self._commands_received += 1
        try:
            command = parse_command(payload)
        except ContractError as exc:
            device.rejected_commands += 1
            log.info("%s rejected a malformed command: %s", device.device_id, exc)
            return
        if command.device_id != device.device_id:
            device.rejected_commands += 1
            return
        if command.package_id == device.package_id:
            # A redelivered command for what already runs (persistent session).
            self._report_job(device, command, JobStep(JobState.SUCCEEDED, 0.0))
            return
        if command.expires_at < datetime.now(UTC):
            device.rejected_commands += 1
            self._report_job(device, command, JobStep(JobState.REJECTED, 0.0, "bad_signature", "command expired"))
            return
        if command.seq <= device.last_command_seq:
            device.rejected_commands += 1
            self._report_job(device, command, JobStep(
                JobState.REJECTED, 0.0, "rollback",
                f"command seq {command.seq} is not newer than {device.last_command_seq}"))
            return
        device.last_command_seq = command.seq
        self._report_job(device, command, JobStep(JobState.RECEIVED, 0.0))
        if device.mode is DeviceMode.INFERRING:
            self._spawn(self._real_install(device, command))
            return
        hook = device.hook or self.deploy_hook
        try:
            plan = hook(device.view(), command)
        except Exception as exc:  # a broken hook is a test bug; report it loudly on the device side
            log.exception("deploy hook failed for %s", device.device_id)
            plan = DeployPlan((JobStep(JobState.FAILED, 0.0, "sim_hook_error", str(exc)[:500]),))
        self._spawn(self._run_plan(device, command, plan))

    async def _run_plan(self, device: _SimDevice, command: DeployCommand, plan: DeployPlan) -> None:
        for step in plan.steps:
            await asyncio.sleep(step.delay_s)
            if not device.running:
                return  # crashed mid-install: nothing more is said
            if step.state is JobState.SUCCEEDED:
                self._install(device, command.model_version, command.package_id, "onnxruntime")
            self._report_job(device, command, step)
        if plan.crash_after:
            await self._go_offline(device, "crash")

    def _install(self, device: _SimDevice, model_version: str, package_id: str, runtime: str) -> None:
        device.model_version, device.package_id, device.runtime = model_version, package_id, runtime
        self._publish(device, self.topics.status(device.device_id), self._status(device).to_bytes(), retain=True)

    def _report_job(self, device: _SimDevice, command: DeployCommand, step: JobStep) -> None:
        device.jobs[command.job_id] = step.state.value
        self._job_reports[step.state.value] += 1
        report = JobStatusReport(
            device_id=device.device_id, job_id=command.job_id, package_id=command.package_id, state=step.state,
            error_code=step.error_code, error=step.error, running_model_version=device.model_version,
            runtime=device.runtime,
        )
        self._publish(device, self.topics.job(device.device_id, command.job_id), report.to_bytes())

    async def _real_install(self, device: _SimDevice, command: DeployCommand) -> None:
        assert self.inferring_state_dir is not None
        enrollment = self._enrollments[device.device_id]
        runtime = _InferringRuntime(self.inferring_state_dir / device.device_id, device.hardware_profile,
                                    api_url=self.inferring_api_url,
                                    trusted_root=Path(str(enrollment["tuf_root_file"])),
                                    seed=device.rng.randrange(2**31))

        def on_state(state: JobState) -> None:  # called on an executor thread
            self._loop.call_soon_threadsafe(self._report_job, device, command, JobStep(state, 0.0))

        try:
            model_version, package_id, runtime_name = await self._loop.run_in_executor(
                self._executor, runtime.install, command, on_state)
        except _InstallFailed as exc:
            state = JobState.REJECTED if exc.code in ("bad_signature", "rollback") else JobState.FAILED
            self._report_job(device, command, JobStep(state, 0.0, exc.code, str(exc)[:2000]))
            return
        previous, device.inference = device.inference, runtime
        if previous is not None:
            previous.close()
        self._install(device, model_version, package_id, runtime_name)
        self._report_job(device, command, JobStep(JobState.SUCCEEDED, 0.0))
        self._spawn(self._infer_loop(device, runtime))

    async def _infer_loop(self, device: _SimDevice, runtime: _InferringRuntime) -> None:
        period_s = 1.0 / self.inferring_fps
        while device.inference is runtime:
            await asyncio.sleep(period_s)
            if device.running:
                await self._loop.run_in_executor(self._executor, runtime.infer_one)


class _InstallFailed(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class _InferringRuntime:
    """The agent's own installer and runtime for one inferring device (executor threads only).

    Every use of agent internals is in this class, so the agent's restructuring
    touches one place. Imports are lazy: protocol mode needs neither onnxruntime
    nor OpenCV.
    """

    def __init__(self, state_dir: Path, hardware_profile: str, *, api_url: str, trusted_root: Path,
                 seed: int) -> None:
        self.state_dir = state_dir
        self.hardware_profile = hardware_profile
        self.api_url = api_url
        self.trusted_root = trusted_root
        self.seed = seed
        self._lock = threading.Lock()
        self._model: Any = None
        self._engine: Any = None
        self._source: Any = None
        self._reset_window()
        self._closed = False

    def _reset_window(self) -> None:
        self._frames = 0
        self._errors = 0
        self._confidence_sum = 0.0
        self._latencies_ms: list[float] = []
        self._labels: Counter[str] = Counter()
        self._window_started = time.monotonic()

    def install(self, command: DeployCommand, on_state: Callable[[JobState], None]) -> tuple[str, str, str]:
        from agent.capture.latest import FrameSlot
        from agent.capture.scenes import SyntheticSource
        from agent.errors import AgentError, RuntimeLoadError
        from agent.infer.engine import InferenceEngine, load_model
        from agent.security.updater import PackageUpdater
        from agent.telemetry.window import WindowStats
        from agent.update.fetcher import HttpFetcher
        from agent.update.installer import fetch_and_verify
        from agent.update.store import PackageStore

        # As the agent does: packages only through TUF, anchored at the enrolled root.
        updater = PackageUpdater(
            metadata_dir=self.state_dir / "tuf" / "metadata", metadata_url=f"{self.api_url}/tuf/metadata/",
            targets_url=f"{self.api_url}/tuf/targets/", trusted_root=self.trusted_root,
            fetcher=HttpFetcher(timeout_s=30, deadline_s=120),
        )
        try:
            manifest, package_dir = fetch_and_verify(
                command, updater=updater, store=PackageStore(self.state_dir),
                hardware_profile=self.hardware_profile, max_package_bytes=200 * 2**20, on_state=on_state,
            )
            on_state(JobState.INSTALLING)
            self._model = load_model(manifest, package_dir, threads=1)
        except RuntimeLoadError as exc:
            raise _InstallFailed("install_failed", str(exc)) from exc
        except AgentError as exc:
            raise _InstallFailed(exc.code, str(exc)) from exc
        self._engine = InferenceEngine(FrameSlot(), WindowStats())
        self._source = SyntheticSource(seed=self.seed, width=320, height=240, frames_per_scene=3)
        return self._model.version, manifest.package_id, self._model.artifact.runtime

    def infer_one(self) -> None:
        if self._closed:
            return
        frame = self._source.read()
        started = time.perf_counter()
        try:
            label, confidence = self._engine.infer_frame(self._model, frame)
        except Exception:  # the agent counts any failing frame (NaN outputs included) as an error
            with self._lock:
                self._errors += 1
            return
        latency_ms = (time.perf_counter() - started) * 1000.0
        with self._lock:
            self._frames += 1
            self._confidence_sum += confidence
            self._latencies_ms.append(latency_ms)
            self._labels[label] += 1

    def take_window(self) -> dict[str, Any]:
        with self._lock:
            frames, errors, confidence_sum = self._frames, self._errors, self._confidence_sum
            latencies, labels, started = sorted(self._latencies_ms), dict(self._labels), self._window_started
            self._reset_window()
        window_s = max(time.monotonic() - started, 1e-3)

        def percentile(q: float) -> float | None:
            return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))], 3) if latencies else None

        return {
            "window_s": round(window_s, 3), "frames": frames, "fps": round(frames / window_s, 2),
            "p50_latency_ms": percentile(0.5), "p95_latency_ms": percentile(0.95),
            "mean_confidence": round(confidence_sum / frames, 4) if frames else None,
            "class_counts": labels, "inference_errors": errors,
            "cpu_percent": 0.0, "memory_mb": 0.0,
        }

    def close(self) -> None:
        self._closed = True


# -- CLI ---------------------------------------------------------------------------------
def _register(api_url: str, device_ids: list[str], hardware_profile: str) -> None:
    import httpx

    with httpx.Client(base_url=api_url, timeout=30) as client:
        for device_id in device_ids:
            response = client.post("/api/v1/devices", json={"id": device_id, "hardware_profile": hardware_profile})
            if response.status_code not in (201, 409):
                raise SystemExit(f"could not register {device_id}: {response.status_code} {response.text[:200]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Simulate a fleet of EdgeFleet devices over MQTT.")
    parser.add_argument("--broker", default="mqtt://127.0.0.1:1883")
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--id-prefix", default="sim-")
    parser.add_argument("--shard", default="0/1", help="i/k: run the i-th of k equal slices of the fleet")
    parser.add_argument("--prefix", default="ef/v1", help="topic prefix")
    parser.add_argument("--interval", type=float, default=1.0, help="telemetry interval per device, seconds")
    parser.add_argument("--seconds", type=float, default=30.0, help="how long to stream")
    parser.add_argument("--profile", default="x86-64-avx2")
    parser.add_argument("--model-version", default=None, help="the model version devices start with")
    parser.add_argument("--register", default=None, metavar="API_URL", help="register the devices first")
    parser.add_argument("--json-out", type=Path, default=None, help="write final stats (and ids) here")
    parser.add_argument("--connect-rate", type=float, default=1000.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    index, count = (int(part) for part in args.shard.split("/"))
    width = max(4, len(str(args.devices - 1)))
    device_ids = [f"{args.id_prefix}{i:0{width}d}" for i in range(args.devices) if i % count == index]
    if args.register:
        _register(args.register, device_ids, args.profile)
    sim = FleetSimulator(args.broker, device_ids, topic_prefix=args.prefix, telemetry_interval_s=args.interval,
                         hardware_profile=args.profile, initial_model_version=args.model_version,
                         initial_package_id=None, record_message_ids=args.json_out is not None,
                         connect_rate_per_s=args.connect_rate)
    started = time.monotonic()
    sim.start()
    connected_s = time.monotonic() - started
    time.sleep(args.seconds)
    sim.stop_telemetry()
    try:
        sim.wait_drained(timeout_s=60)
    except (TimeoutError, concurrent.futures.TimeoutError):
        log.warning("not every report was acknowledged before the deadline")
    stats = sim.stats()
    ids = sim.telemetry_message_ids() if args.json_out else []
    sim.stop()
    if args.json_out:
        args.json_out.write_text(json.dumps({"stats": stats.as_dict(), "connect_s": connected_s,
                                             "message_ids": ids}))
    print(f"fleet-sim: devices={len(device_ids)} connect_s={connected_s:.1f} "
          f"generated={stats.telemetry_generated} acked={stats.telemetry_acked} "
          f"dropped={stats.telemetry_dropped} resent={stats.resent}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

