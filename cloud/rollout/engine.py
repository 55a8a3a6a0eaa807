"""The rollout engine: the I/O shell around the pure planner, gates and decisions.

Each tick, for every active rollout, in one transaction:

1. lock the rollout row (``FOR UPDATE SKIP LOCKED``): another engine working on it
   is skipped, never waited for, so replicas split rollouts between them;
2. read devices, jobs (written by ingest) and telemetry; advance each device with
   :func:`~cloud.rollout.decisions.next_device_state`;
3. dispatch pending devices within the rate limit, locking their rows with
   ``SKIP LOCKED`` too, and create their jobs;
4. evaluate the gates per stratum and apply :func:`~cloud.rollout.decisions.decide_stage`;
5. commit, and only then publish the commands. A crash between commit and publish
   leaves devices "queued" with no command; the queued timeout retries them.

A rollout is state in the database, so an engine started after a crash simply
continues. On SQLite, which has no row locks, run a single engine.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, update
from sqlalchemy import select as sa_select
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, col, select

from agent.contract import DeployCommand
from cloud.core.timestamps import utc_now
from cloud.fleet.crud import short_id
from cloud.fleet.tables import Deployment, Device, DeviceJob, Package, TelemetryRecord
from cloud.monitor.tables import DriftWindowRecord
from cloud.rollout.commands import deploy_command
from cloud.rollout.decisions import (
    IN_FLIGHT_STATES,
    TOUCHED_STATES,
    Action,
    Decision,
    DeviceObservation,
    DeviceState,
    RolloutState,
    StratumVerdict,
    decide_stage,
    next_device_state,
    next_rollback_state,
)
from cloud.rollout.gates import (
    InstallOutcomes,
    ShadowStats,
    TelemetryWindow,
    aggregate,
    evaluate_shadow,
    evaluate_stratum,
)
from cloud.rollout.service import baseline_stats, detection_parts, record_decision
from cloud.rollout.spec import RolloutSpec
from cloud.rollout.tables import Rollout, RolloutDevice, RolloutWindow

__all__ = ["ACTIVE_ROLLOUT_STATES", "EngineConfig", "RolloutEngine"]

log = logging.getLogger(__name__)

Publisher = Callable[[DeployCommand], None]
ACTIVE_ROLLOUT_STATES = (RolloutState.RUNNING, RolloutState.PAUSED, RolloutState.AWAITING_APPROVAL,
                         RolloutState.ABORTING, RolloutState.FINISHING)
CANARY_STATES = frozenset({DeviceState.PROBATION, DeviceState.SUCCEEDED, DeviceState.FAILED})
UNTOUCHED_STATES = frozenset({DeviceState.PENDING, DeviceState.OFFLINE})
ROLLBACK_STATES = frozenset({DeviceState.ROLLBACK_PENDING, DeviceState.ROLLING_BACK})
# A rollout whose stages all passed stays "finishing" while any device is in one of these
# (offline devices that may return, installs or rollbacks of a halted stratum in flight).
STRAGGLER_STATES = frozenset({*UNTOUCHED_STATES, *IN_FLIGHT_STATES, *ROLLBACK_STATES})


@dataclass(frozen=True)
class EngineConfig:
    tick_s: float = 1.0
    command_ttl_s: int = 3600
    # Hard cap per rollout per tick, whatever the rate limit allows (bounds one transaction).
    max_dispatch_per_tick: int = 5000


@dataclass(frozen=True)
class _Window:
    message_id: str
    device_id: str
    package_id: str | None
    received_at: datetime
    window: TelemetryWindow


class RolloutEngine:
    """Drives every active rollout. ``tick`` is one pass; ``start`` runs it on a thread."""

    def __init__(self, db: Engine, publish: Publisher, base_url: str | Callable[[], str], *,
                 config: EngineConfig | None = None, name: str = "engine") -> None:
        self.db = db
        self._publish = publish
        self._base_url = base_url
        self.config = config or EngineConfig()
        self.name = name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Commands published, and wall seconds spent in the passes that published them
        # (lock, gates, jobs, commit, signing, publishing): the engine's dispatch throughput.
        self.dispatched_total = 0
        self.dispatch_seconds = 0.0

    # -- lifecycle -----------------------------------------------------------
    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"rollout-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # one bad tick must not end the engine; the next one retries
                log.exception("rollout engine %s: tick failed", self.name)
            self._stop.wait(self.config.tick_s)

    @property
    def base_url(self) -> str:
        return self._base_url() if callable(self._base_url) else self._base_url

    # -- one pass ------------------------------------------------------------
    def tick(self, now: datetime | None = None) -> None:
        with Session(self.db) as session:
            ids = list(session.exec(select(Rollout.id).where(col(Rollout.state).in_(ACTIVE_ROLLOUT_STATES))))
        for rollout_id in ids:
            self.tick_rollout(rollout_id, now or utc_now())

    def tick_rollout(self, rollout_id: str, now: datetime) -> None:
        started = time.perf_counter()
        outbox: list[DeployCommand] = []
        with Session(self.db) as session:
            rollout = session.exec(
                select(Rollout).where(Rollout.id == rollout_id).with_for_update(skip_locked=True)
            ).first()
            if rollout is None or rollout.state not in ACTIVE_ROLLOUT_STATES:
                return  # another engine holds it, or it just finished
            _Pass(self, session, rollout, now, outbox).run()
            session.commit()
        for command in outbox:
            self._publish(command)
        if outbox:
            self.dispatched_total += len(outbox)
            self.dispatch_seconds += time.perf_counter() - started


class _Pass:
    """One tick over one rollout, inside its transaction."""

    def __init__(self, engine: RolloutEngine, session: Session, rollout: Rollout, now: datetime,
                 outbox: list[DeployCommand]) -> None:
        self.engine = engine
        self.session = session
        self.rollout = rollout
        self.now = now
        self.outbox = outbox
        self.spec = RolloutSpec.model_validate(rollout.spec)
        self.actor = f"engine:{engine.name}"
        self.rows = list(session.exec(select(RolloutDevice).where(RolloutDevice.rollout_id == rollout.id)))
        device_ids = [row.device_id for row in self.rows]
        self.devices = {d.id: d for d in session.exec(select(Device).where(col(Device.id).in_(device_ids)))}
        job_ids = [j for row in self.rows for j in (row.job_id, row.shadow_job_id) if j]
        self.jobs = {j.id: j for j in session.exec(select(DeviceJob).where(col(DeviceJob.id).in_(job_ids)))}
        self._packages: dict[str, Package | None] = {}
        self._seqs: dict[str, int] = {}  # device id -> command seq allocated for this pass
        # stratum -> control source and group summaries, added to the decision's numbers.
        self._numbers: dict[str, dict[str, Any]] = {}

    def online(self, row: RolloutDevice) -> bool:
        device = self.devices.get(row.device_id)
        return bool(device and device.online)

    def set_state(self, row: RolloutDevice, state: DeviceState, reason: str) -> None:
        if row.state != state:
            # One line per device transition: DEBUG. The stage decisions summarise them at INFO.
            log.debug("rollout %s: device %s %s -> %s (%s)", self.rollout.id, row.device_id, row.state, state.value,
                      reason[:200])
        row.state, row.reason, row.state_since = state, reason[:500], self.now
        self.session.add(row)

    def device_summary(self) -> str:
        """"3 succeeded, 1 installing": where the rollout's devices are, for the INFO summaries."""
        counts = Counter(str(r.state) for r in self.rows)
        return ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "no devices"

    # -- the pass --------------------------------------------------------------
    def run(self) -> None:
        state = RolloutState(self.rollout.state)
        self.track_restarts()
        self.advance_devices()
        if state == RolloutState.RUNNING:
            if self.rollout.phase == "shadow":
                self.dispatch_shadow()
            else:
                self.dispatch_installs()
            stage, phase = self.rollout.stage, self.rollout.phase
            self.decide()
            if self.rollout.state == RolloutState.RUNNING and (self.rollout.stage, self.rollout.phase) != (stage, phase):
                # A new stage or phase starts dispatching now rather than a tick later.
                self.dispatch_shadow() if self.rollout.phase == "shadow" else self.dispatch_installs()
        elif state == RolloutState.FINISHING:
            self.dispatch_installs()
            if not any(r.state in STRAGGLER_STATES for r in self.rows):
                self.finish(RolloutState.COMPLETED, "every straggler settled")
        self.dispatch_rollbacks()
        if RolloutState(self.rollout.state) == RolloutState.ABORTING and not any(
                r.state in ROLLBACK_STATES for r in self.rows):
            counts = Counter(r.state for r in self.rows)
            self.finish(RolloutState.ABORTED, "every touched device was rolled back", {"devices": dict(counts)})
        self.rollout.updated_at = self.now
        self.session.add(self.rollout)

    def finish(self, state: RolloutState, reason: str, numbers: dict[str, Any] | None = None) -> None:
        self.rollout.state = state
        self.rollout.finished_at = self.now
        record_decision(self.session, self.rollout, state.value, reason, numbers or {}, actor=self.actor)
        log.info("rollout %s ended %s: %s; devices: %s", self.rollout.id, state.value, reason, self.device_summary())

    # -- device states ----------------------------------------------------------
    def track_restarts(self) -> None:
        for row in self.rows:
            online = self.online(row)
            if row.last_online and not online and row.state in (*CANARY_STATES, *UNTOUCHED_STATES):
                # A canary dropping offline after it received the release is a restart signal;
                # the same on a control device is the fleet's normal churn to compare with.
                row.restarts += 1
            if row.last_online != online:
                row.last_online = online
                self.session.add(row)

    def windows_on_target(self, rows: list[RolloutDevice]) -> dict[str, int]:
        if not rows:
            return {}
        since = min(r.dispatched_at or r.state_since for r in rows)
        by_device = {r.device_id: r for r in rows}
        query = select(TelemetryRecord.device_id, TelemetryRecord.package_id, TelemetryRecord.received_at).where(
            col(TelemetryRecord.device_id).in_(list(by_device)), col(TelemetryRecord.received_at) >= since,
            col(TelemetryRecord.frames) > 0)
        counts: Counter[str] = Counter()
        for device_id, package_id, received_at in self.session.exec(query):
            row = by_device[device_id]
            if package_id == row.package_id and received_at >= (row.dispatched_at or row.state_since):
                counts[device_id] += 1
        return counts

    def advance_devices(self) -> None:
        timeouts, gates = self.spec.timeouts, self.spec.gates
        probation = [r for r in self.rows if r.state == DeviceState.PROBATION]
        evidence = self.windows_on_target(probation)
        for row in self.rows:
            state = DeviceState(row.state)
            device = self.devices.get(row.device_id)
            job = self.jobs.get(row.job_id) if row.job_id else None
            if state in ROLLBACK_STATES:
                transition = next_rollback_state(
                    self.observe(row, job, device, target=row.previous_package_id or ""),
                    previous_package_id=row.previous_package_id, now=self.now, timeouts=timeouts,
                    max_retries=self.spec.max_retries)
            elif state in IN_FLIGHT_STATES or state == DeviceState.OFFLINE:
                transition = next_device_state(
                    self.observe(row, job, device, target=row.package_id, windows=evidence.get(row.device_id, 0)),
                    now=self.now, timeouts=timeouts, max_retries=self.spec.max_retries,
                    probation_min_windows=gates.probation_min_windows)
            else:
                continue
            if transition is not None:
                self.set_state(row, transition.state, transition.reason)

    def observe(self, row: RolloutDevice, job: DeviceJob | None, device: Device | None, *, target: str,
                windows: int = 0) -> DeviceObservation:
        return DeviceObservation(
            state=DeviceState(row.state), state_since=row.state_since, attempts=row.attempts,
            online=bool(device and device.online), job_state=job.state if job else None,
            job_error=(job.error_code or job.error) if job else None,
            running_package_id=device.running_package_id if device else None, target_package_id=target,
            windows_on_target=windows,
        )

    # -- dispatch ---------------------------------------------------------------
    def package(self, package_id: str) -> Package | None:
        if package_id not in self._packages:
            self._packages[package_id] = self.session.get(Package, package_id)
        return self._packages[package_id]

    def deployment_for(self, package_id: str) -> str:
        # One deployment row per (rollout, package) so device jobs fit the shared job table.
        deployment_id = f"{self.rollout.id}-{hashlib.sha256(package_id.encode()).hexdigest()[:8]}"
        if self.session.get(Deployment, deployment_id) is None:
            self.session.add(Deployment(id=deployment_id, package_id=package_id))
            self.session.flush()
        return deployment_id

    def allocate_seqs(self, rows: Iterable[RolloutDevice]) -> None:
        """Take the next command sequence number of each device, in one short transaction.

        On PostgreSQL this runs apart from the pass's transaction, so device rows (which
        ingest updates all the time) are locked for one statement, not for the whole pass.
        A pass that fails afterwards leaves gaps in the sequence, which devices accept: they
        only require it to grow. SQLite allows one writer, so there it stays in the pass.
        """
        ids = sorted({row.device_id for row in rows} - self._seqs.keys())
        if not ids or self.session.get_bind().dialect.name != "postgresql":
            return
        statement = (update(Device).where(col(Device.id).in_(ids)).values(command_seq=col(Device.command_seq) + 1)
                     .returning(col(Device.id), col(Device.command_seq)))
        for attempt in range(3):
            try:
                with self.engine.db.begin() as connection:
                    self._seqs.update({device_id: int(seq) for device_id, seq in connection.execute(statement)})
                return
            except OperationalError:  # a deadlock with ingest's batch: retry the one statement
                if attempt == 2:
                    raise
                time.sleep(0.05 * (attempt + 1))

    def command_for(self, row: RolloutDevice, package: Package, *, mode: str = "install",
                    rollback: bool = False) -> DeployCommand:
        seq = self._seqs.pop(row.device_id, None)
        if seq is None:
            seq = self.session.execute(
                update(Device).where(col(Device.id) == row.device_id)
                .values(command_seq=col(Device.command_seq) + 1).returning(col(Device.command_seq))
            ).scalar_one()
        job_id = short_id("job")
        self.session.add(DeviceJob(id=job_id, deployment_id=self.deployment_for(package.id), device_id=row.device_id,
                                   package_id=package.id, created_at=self.now, updated_at=self.now))
        extra: dict[str, Any] = {}
        if mode == "shadow":
            assert self.spec.shadow is not None
            # As long as the phase can last before it pauses for too few samples; an install
            # command ends it sooner, and after an abort devices stop shadowing on their own.
            extra = {"mode": "shadow", "shadow_sample_fraction": self.spec.shadow.sample_fraction,
                     "shadow_duration_s": self.spec.shadow.duration_s + self.spec.gates.gate_wait_s}
        command = deploy_command(package, device_id=row.device_id, job_id=job_id, seq=int(seq),
                                 base_url=self.engine.base_url, rollback=rollback,
                                 expires_at=self.now + timedelta(seconds=self.engine.config.command_ttl_s), **extra)
        self.outbox.append(command)
        return command

    def budget(self) -> int:
        rate = self.spec.dispatch_rate_per_s
        elapsed_s = max(0.0, (self.now - self.rollout.budget_at).total_seconds())
        # Up to two ticks' worth may accumulate; unused budget beyond that is not saved up.
        cap = max(1.0, rate * 2 * self.engine.config.tick_s)
        self.rollout.dispatch_budget = min(cap, self.rollout.dispatch_budget + rate * elapsed_s)
        self.rollout.budget_at = self.now
        return min(int(self.rollout.dispatch_budget), self.engine.config.max_dispatch_per_tick)

    def spend(self, count: int) -> None:
        self.rollout.dispatch_budget = max(0.0, self.rollout.dispatch_budget - count)

    def lock(self, rows: Iterable[RolloutDevice]) -> list[RolloutDevice]:
        """Row-lock ``rows`` with SKIP LOCKED: whatever another transaction holds is left alone."""
        by_id = {row.id: row for row in rows}
        if not by_id:
            return []
        locked = set(self.session.exec(
            select(RolloutDevice.id).where(col(RolloutDevice.id).in_(list(by_id))).with_for_update(skip_locked=True)))
        return [row for row_id, row in by_id.items() if row_id in locked]

    def dispatch_installs(self) -> None:
        if not self.spec.in_maintenance_window(self.now):
            return
        halted = set(self.rollout.halted_strata)
        last = RolloutState(self.rollout.state) == RolloutState.FINISHING
        pending = sorted((r for r in self.rows if r.state == DeviceState.PENDING and r.stratum not in halted
                          and (last or r.stage <= self.rollout.stage)), key=lambda r: (r.stage, r.id or 0))
        if not pending:
            return
        allowed = self.budget()
        chosen: list[RolloutDevice] = []
        for row in self.lock(pending):
            if len(chosen) >= allowed:
                break
            if not self.online(row):
                self.set_state(row, DeviceState.OFFLINE, "offline when its turn came; dispatched on return")
                self.backfill(row)
                continue
            chosen.append(row)
        sent = 0
        self.allocate_seqs(chosen)
        # Device rows (command_seq) are updated in id order, so two engines' transactions
        # lock shared rows in the same order and cannot deadlock on each other.
        for row in sorted(chosen, key=lambda r: r.device_id):
            package = self.package(row.package_id)
            if package is None:
                self.set_state(row, DeviceState.FAILED, f"package {row.package_id} no longer exists")
                continue
            command = self.command_for(row, package)
            row.job_id, row.attempts, row.dispatched_at, row.restarts = command.job_id, row.attempts + 1, self.now, 0
            self.set_state(row, DeviceState.QUEUED, f"dispatched job {command.job_id}")
            sent += 1
        self.spend(sent)

    def backfill(self, offline_row: RolloutDevice) -> None:
        """Keep the stage's sample size: pull an online device of the same stratum forward."""
        if offline_row.stage != self.rollout.stage or RolloutState(self.rollout.state) != RolloutState.RUNNING:
            return
        for row in sorted(self.rows, key=lambda r: (r.stage, r.id or 0)):
            if (row.stratum == offline_row.stratum and row.stage > self.rollout.stage
                    and row.state == DeviceState.PENDING and self.online(row)):
                row.stage = self.rollout.stage
                self.session.add(row)
                return

    def dispatch_shadow(self) -> None:
        if not self.spec.in_maintenance_window(self.now):
            return
        candidates = [r for r in self.rows if r.stage == self.rollout.stage and r.state == DeviceState.PENDING
                      and r.shadow_job_id is None and r.stratum not in self.rollout.halted_strata
                      and self.online(r)]
        allowed = self.budget()
        sent = 0
        chosen = sorted(self.lock(candidates)[:allowed], key=lambda r: r.device_id)
        self.allocate_seqs(chosen)
        for row in chosen:
            package = self.package(row.package_id)
            if package is None:
                continue
            row.shadow_job_id = self.command_for(row, package, mode="shadow").job_id
            self.session.add(row)
            sent += 1
        self.spend(sent)

    def dispatch_rollbacks(self) -> None:
        waiting = [r for r in self.rows if r.state == DeviceState.ROLLBACK_PENDING]
        # Rollbacks are not rate limited: getting devices off a bad release comes first.
        chosen = sorted(self.lock(waiting)[: self.engine.config.max_dispatch_per_tick], key=lambda r: r.device_id)
        self.allocate_seqs([r for r in chosen if r.previous_package_id is not None and self.online(r)])
        for row in chosen:
            if row.previous_package_id is None:
                self.set_state(row, DeviceState.ROLLED_BACK, "no previous version to return to")
                continue
            package = self.package(row.previous_package_id)
            if package is None:
                self.set_state(row, DeviceState.ROLLBACK_FAILED, f"previous package {row.previous_package_id} is gone")
                continue
            if not self.online(row):
                continue  # sent when it returns (or expires per policy)
            # Signed as a rollback: the previous package is an older release, which devices
            # refuse from an ordinary deploy.
            command = self.command_for(row, package, rollback=True)
            row.job_id, row.attempts, row.dispatched_at = command.job_id, row.attempts + 1, self.now
            self.set_state(row, DeviceState.ROLLING_BACK, f"rollback job {command.job_id} to {package.id}")

    # -- gates and decisions ------------------------------------------------------
    def telemetry(self, since: datetime) -> list[_Window]:
        device_ids = [row.device_id for row in self.rows]
        # Columns only (no ORM objects): this is the engine's largest read on a big fleet.
        t = TelemetryRecord
        query = sa_select(col(t.message_id), col(t.device_id), col(t.package_id), col(t.received_at), col(t.frames),
                          col(t.inference_errors), col(t.p95_latency_ms), col(t.mean_confidence),
                          col(t.class_counts)).where(
            col(TelemetryRecord.device_id).in_(device_ids), col(TelemetryRecord.received_at) >= since)
        invalid = dict(self.session.exec(select(RolloutWindow.message_id, RolloutWindow.invalid_outputs).where(
            col(RolloutWindow.device_id).in_(device_ids), col(RolloutWindow.received_at) >= since,
            col(RolloutWindow.invalid_outputs) > 0)).all())
        detections = detection_parts(self.session, device_ids, since)
        windows = []
        for message_id, device_id, package_id, received_at, frames, errors, p95, confidence, classes in \
                self.session.execute(query):
            errors += int(invalid.get(message_id, 0))
            if frames == 0 and errors == 0:
                continue  # an idle device says nothing about the model
            windows.append(_Window(message_id, device_id, package_id, received_at, TelemetryWindow(
                device_id=device_id, frames=frames, inference_errors=errors, p95_latency_ms=p95,
                mean_confidence=confidence, class_counts=dict(classes or {}), detection=detections.get(message_id))))
        return windows

    def drift_scores(self, since: datetime) -> dict[str, list[tuple[str | None, datetime, float]]]:
        """Drift window scores (cloud/monitor's test of each device window), when devices report drift."""
        query = select(DriftWindowRecord.device_id, DriftWindowRecord.package_id, DriftWindowRecord.received_at,
                       DriftWindowRecord.score).where(
            col(DriftWindowRecord.device_id).in_([row.device_id for row in self.rows]),
            col(DriftWindowRecord.received_at) >= since, col(DriftWindowRecord.score).is_not(None))
        scores: dict[str, list[tuple[str | None, datetime, float]]] = defaultdict(list)
        for device_id, package_id, received_at, score in self.session.exec(query):
            if score is not None:
                scores[device_id].append((package_id, received_at, float(score)))
        return scores

    def stage_rows(self) -> dict[str, list[RolloutDevice]]:
        by_stratum: dict[str, list[RolloutDevice]] = defaultdict(list)
        for row in self.rows:
            by_stratum[row.stratum].append(row)
        return by_stratum

    def install_verdicts(self) -> dict[str, StratumVerdict]:
        phase_start = self.rollout.phase_started_at
        elapsed_s = (self.now - phase_start).total_seconds()
        since = phase_start - timedelta(seconds=self.spec.gates.control_window_s)
        windows_by_device: dict[str, list[_Window]] = defaultdict(list)
        for window in self.telemetry(since):
            windows_by_device[window.device_id].append(window)
        drift = self.drift_scores(since)
        verdicts = {}
        for stratum, rows in sorted(self.stage_rows().items()):
            in_stage = [r for r in rows if r.stage <= self.rollout.stage]
            canaries = [r for r in in_stage if r.state in CANARY_STATES]
            untouched = [r for r in rows if r.state in UNTOUCHED_STATES]
            canary_windows = [w.window for r in canaries for w in windows_by_device[r.device_id]
                              if w.package_id == r.package_id and w.received_at >= (r.dispatched_at or since)]
            control_windows = [w.window for r in rows for w in windows_by_device[r.device_id]
                               if w.package_id != r.package_id]
            canary = aggregate(canary_windows, restarts=sum(r.restarts for r in canaries), devices=len(canaries))
            control = aggregate(control_windows, restarts=sum(r.restarts for r in untouched), devices=len(untouched))
            canary.drift_scores = [score for r in canaries for package_id, received_at, score in drift[r.device_id]
                                   if package_id == r.package_id and received_at >= (r.dispatched_at or since)]
            control.drift_scores = [score for r in rows for package_id, _at, score in drift[r.device_id]
                                    if package_id != r.package_id]
            source = "live"
            if control.frames + control.errors < self.spec.gates.min_frames:
                # No comparable devices left on the previous version: use its recorded baseline.
                source, control = "baseline", baseline_stats(self.rollout, stratum)
            installs = InstallOutcomes(
                succeeded=sum(r.state == DeviceState.SUCCEEDED for r in in_stage),
                failed=sum(r.state == DeviceState.FAILED for r in in_stage))
            settling = any(r.state in (DeviceState.PENDING, *IN_FLIGHT_STATES) for r in in_stage)
            interim = settling or elapsed_s < self.spec.stage_soak_s(self.rollout.stage)
            gates = evaluate_stratum(self.spec.gates, installs=installs, canary=canary, control=control,
                                     interim=interim)
            counts = Counter(r.state for r in in_stage)
            verdict = StratumVerdict(stratum, dict(counts), gates, halted=stratum in self.rollout.halted_strata)
            verdicts[stratum] = verdict
            self._numbers[stratum] = {"control_source": source, "canary": canary.summary(),
                                      "control": control.summary()}
        return verdicts

    def shadow_verdicts(self) -> dict[str, StratumVerdict]:
        assert self.spec.shadow is not None
        since = self.rollout.phase_started_at
        stage_rows = {r.device_id: r for r in self.rows if r.stage == self.rollout.stage}
        stats: dict[str, ShadowStats] = defaultdict(ShadowStats)
        devices: dict[str, set[str]] = defaultdict(set)
        query = select(RolloutWindow).where(col(RolloutWindow.device_id).in_(list(stage_rows)),
                                            col(RolloutWindow.received_at) >= since,
                                            col(RolloutWindow.shadow_package_id).is_not(None))
        for window in self.session.exec(query):
            row = stage_rows[window.device_id]
            if window.shadow_package_id != row.package_id:
                continue
            shadow = stats[row.stratum]
            devices[row.stratum].add(row.device_id)
            shadow.frames += window.shadow_frames
            shadow.agreements += window.shadow_agreements
            shadow.candidate_errors += window.shadow_errors
            if window.shadow_p95_latency_ms is not None:
                shadow.candidate_p95_latency_ms.append(window.shadow_p95_latency_ms)
            if window.active_p95_latency_ms is not None:
                shadow.active_p95_latency_ms.append(window.active_p95_latency_ms)
            shadow.boxes_active += window.shadow_boxes_active
            shadow.boxes_candidate += window.shadow_boxes_candidate
            shadow.boxes_matched += window.shadow_boxes_matched
        verdicts = {}
        for stratum, rows in sorted(self.stage_rows().items()):
            shadow = stats[stratum]
            shadow.devices = len(devices[stratum])
            in_stage = [r for r in rows if r.stage == self.rollout.stage]
            counts = Counter("shadowing" if r.shadow_job_id else r.state for r in in_stage)
            verdicts[stratum] = StratumVerdict(stratum, dict(counts), evaluate_shadow(self.spec.shadow, shadow),
                                               halted=stratum in self.rollout.halted_strata)
        return verdicts

    def decide(self) -> None:
        shadow = self.rollout.phase == "shadow"
        verdicts = self.shadow_verdicts() if shadow else self.install_verdicts()
        elapsed_s = (self.now - self.rollout.phase_started_at).total_seconds()
        decision = decide_stage(self.spec, stage=self.rollout.stage, phase=self.rollout.phase, verdicts=verdicts,
                                elapsed_s=elapsed_s)
        for stratum, extra in self._numbers.items():
            decision.numbers["strata"][stratum].update(extra)
        self.rollout.evaluation = {"at": self.now.isoformat(), "action": decision.action.value,
                                   "reason": decision.reason, **decision.numbers}
        self.apply(decision)

    def apply(self, decision: Decision) -> None:
        rollout, action = self.rollout, decision.action
        if action == Action.AWAIT_APPROVAL and rollout.approved_stage == rollout.stage:
            # The operator already approved moving past this stage.
            rollout.approved_stage = None
            action = (Action.START_INSTALL if rollout.phase == "shadow" else
                      Action.COMPLETE if rollout.stage == len(self.spec.stages) - 1 else Action.PROMOTE)
            decision.reason += " (approved by the operator)"
        if action == Action.WAIT:
            return
        if decision.failed_strata:
            decision.numbers["failed_strata"] = decision.failed_strata
        record_decision(self.session, rollout, action.value, decision.reason, decision.numbers, actor=self.actor)
        # A stage decision is the summary an operator reads at INFO (stopping ones at WARNING);
        # stages are numbered from 1 for people.
        level = logging.WARNING if action in (Action.ABORT, Action.HALT_STRATA) else logging.INFO
        log.log(level, "rollout %s stage %d of %d: %s (%s); devices: %s", rollout.id, rollout.stage + 1,
                len(self.spec.stages), action.value, decision.reason, self.device_summary())
        if action == Action.PROMOTE:
            rollout.stage += 1
            rollout.phase = "shadow" if self.spec.shadows_stage(rollout.stage) else "install"
            rollout.phase_started_at = self.now
        elif action == Action.START_INSTALL:
            rollout.phase, rollout.phase_started_at = "install", self.now
        elif action == Action.AWAIT_APPROVAL:
            rollout.state = RolloutState.AWAITING_APPROVAL
        elif action == Action.HALT_STRATA:
            rollout.halted_strata = sorted({*rollout.halted_strata, *decision.failed_strata})
            self.stop_devices([r for r in self.rows if r.stratum in decision.failed_strata], DeviceState.HALTED,
                              f"stratum stopped: {decision.reason}")
        elif action == Action.ABORT:
            rollout.state = RolloutState.ABORTING
            self.stop_devices(self.rows, DeviceState.CANCELLED, f"rollout aborted: {decision.reason}")
        elif action == Action.COMPLETE:
            stragglers = any(r.state in STRAGGLER_STATES for r in self.rows)
            if stragglers:
                rollout.state = RolloutState.FINISHING
            else:
                rollout.state, rollout.finished_at = RolloutState.COMPLETED, self.now

    def stop_devices(self, rows: Iterable[RolloutDevice], untouched_state: DeviceState, reason: str) -> None:
        for row in rows:
            if row.state in TOUCHED_STATES:
                row.attempts = 0
                self.set_state(row, DeviceState.ROLLBACK_PENDING, reason)
            elif row.state in UNTOUCHED_STATES:
                self.set_state(row, untouched_state, reason)

