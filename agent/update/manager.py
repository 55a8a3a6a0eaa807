"""Drives one pipeline's install state machine: persist, (crash hook), report, perform.

The decisions live in :mod:`agent.update.machine` and :mod:`agent.update.probation`;
this module does the I/O around them. Each state is saved *before* its step runs,
so a crash anywhere resumes from :data:`agent.update.machine.RESUME`.
"""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import psutil

from agent.contract import (
    MANIFEST_FILE,
    DeployCommand,
    JobState,
    JobStatusReport,
    PackageManifest,
    RuntimeMeasurement,
)
from agent.errors import AgentError, UntrustedContentError
from agent.faults import crash_point, segfault_point
from agent.infer.engine import InferenceEngine, LoadedModel, load_model
from agent.runtime import InferenceBackend, available_devices
from agent.runtime.select import Candidate, fastest, plan_candidates, self_test, time_backend
from agent.update.boot import BOOT_LOOP_ERROR, BootAction, decide_boot
from agent.update.installer import FetchedPackage, check_digests, check_release_floor
from agent.update.machine import InstallState, job_state_for, next_state, resume_state
from agent.update.probation import Baseline, ProbationLimits, ProbationWatch, Verdict, judge
from agent.update.store import InstallRecord, PackageStore, SlotContent, SlotName, UpdateState

log = logging.getLogger(__name__)

S = InstallState
PROBATION_POLL_S = 0.2


# command -> the package in memory, downloaded and verified through TUF. The app provides it:
# that is where the security layer (the TUF updater) lives.
FetchPackage = Callable[[DeployCommand], FetchedPackage]


@dataclass(frozen=True)
class InstallSettings:
    hardware_profile: str
    profile_runtimes: Sequence[Mapping[str, Any]] | None
    threads: int
    max_package_bytes: int
    memory_budget_mb: float
    timing_runs: int
    max_resumes: int
    probation: ProbationLimits
    max_boot_attempts: int = 3


@dataclass
class _Context:
    """What one run of the machine keeps in memory between steps (lost on a crash, by design)."""

    fetched: FetchedPackage | None = None
    manifest: PackageManifest | None = None
    package_dir: Path | None = None
    accepted: list[tuple[Candidate, InferenceBackend, Any]] = field(default_factory=list)
    selected: LoadedModel | None = None
    previous: LoadedModel | None = None
    baseline: Baseline = field(default_factory=Baseline)
    watch: ProbationWatch | None = None


def _resumes_into_rollback(record: InstallRecord, max_resumes: int) -> bool:
    return resume_state(record.state, resumes=record.resumes + 1, max_resumes=max_resumes) is S.ROLLBACK


class _Interrupted(Exception):
    """The agent is stopping in the middle of a step; the persisted state decides on restart."""


class ServedModel(Protocol):
    """What an install swaps: a model group (cameras sharing a model) or a single pipeline."""

    @property
    def name(self) -> str: ...

    @property
    def engine(self) -> InferenceEngine: ...


class InstallManager:
    def __init__(
        self,
        *,
        device_id: str,
        pipeline: ServedModel,
        store: PackageStore,
        fetch_package: FetchPackage,
        settings: InstallSettings,
        send_job_report: Callable[[JobStatusReport], None],
        on_serving_changed: Callable[[], None],
        stop: threading.Event,
    ) -> None:
        self.device_id = device_id
        self.pipeline = pipeline
        self.store = store
        self._fetch_package = fetch_package
        self.settings = settings
        self._send = send_job_report
        self._on_serving_changed = on_serving_changed
        self._stop = stop
        self._process = psutil.Process()
        self.state = S.IDLE
        self._boot_unconfirmed = False  # a boot record waits for the first healthy window

    # -- start-up ------------------------------------------------------------
    def restore(self) -> None:
        """Serve whatever the active slot holds (called before anything else runs)."""
        state = self.store.read()
        slot = state.active_slot
        record = state.install
        if record is not None and _resumes_into_rollback(record, self.settings.max_resumes):
            # An install died after its switch: never load the untrusted model again
            # (it may be what killed us); serve the previous one while resume() rolls back.
            slot = record.previous_slot
        content = state.content(slot)
        if content is None or slot is None:
            log.info("[%s] no model to serve yet; waiting for a deployment", self.pipeline.name)
            return
        if record is None:  # an install in flight has its own loop counter (max_resumes)
            slot_or_none = self._count_boot(slot, content.package_id)
            if slot_or_none is None:
                return
            slot = slot_or_none
            content = self.store.read().content(slot)
            assert content is not None
        model = self._load_slot(slot, content)
        if model is not None:
            self.pipeline.engine.swap(model)

    def _count_boot(self, slot: SlotName, package_id: str) -> SlotName | None:
        """Count this start-up of the committed model, persisted before it loads; fall back past the limit.

        Returns the slot to load, or None when there is nothing safe to serve.
        """
        state = self.store.read()
        fallback: SlotName = "B" if slot == "A" else "A"
        decision = decide_boot(state.boot, package_id, max_boot_attempts=self.settings.max_boot_attempts,
                               has_fallback=state.content(fallback) is not None)
        state.boot = decision.record
        if decision.action is BootAction.LOAD:
            self.store.write(state)
            self._boot_unconfirmed = True
            return slot
        failed_job = state.last_job_id
        if decision.action is BootAction.FALL_BACK:
            state.active_slot = fallback
            state.slots[slot] = None  # never loaded again; the next install stages there
        self.store.write(state)
        log.error("[%s] boot loop: %s; %s", self.pipeline.name, decision.reason,
                  "falling back to the previous model" if decision.action is BootAction.FALL_BACK
                  else "no previous model to fall back to: serving nothing until the next deployment")
        fallback_content = state.content(fallback) if decision.action is BootAction.FALL_BACK else None
        self._send(JobStatusReport(
            device_id=self.device_id, job_id=failed_job or f"boot-{package_id}"[:64], package_id=package_id,
            state=JobState.FAILED, error_code=BOOT_LOOP_ERROR, error=decision.reason,
            running_model_version=fallback_content.model_version if fallback_content else None,
        ))
        return fallback if decision.action is BootAction.FALL_BACK else None

    def confirm_healthy(self) -> None:
        """The model served a healthy window: its start-up counts as good (clears the boot record)."""
        if not self._boot_unconfirmed:
            return
        state = self.store.read()
        state.boot = None
        self.store.write(state)
        self._boot_unconfirmed = False

    def resume(self) -> None:
        """Continue an install a crash interrupted, as the resume table says."""
        state = self.store.read()
        record = state.install
        if record is None or record.state is S.IDLE:
            return
        record.resumes += 1
        target = resume_state(record.state, resumes=record.resumes, max_resumes=self.settings.max_resumes)
        log.warning("[%s] resuming install of %s: found %s on disk, continuing at %s (restart %d)",
                    self.pipeline.name, record.command.get("package_id"), record.state.value, target.value,
                    record.resumes)
        if target is not S.IDLE and record.error_code is None:
            if record.resumes > self.settings.max_resumes:
                record.error_code, record.error = "install_loop", (
                    f"install interrupted {record.resumes} times (last in {record.state.value}); giving up")
            elif target is S.ROLLBACK:
                record.error_code, record.error = (f"interrupted_in_{record.state.value}",
                                                   f"agent restarted during {record.state.value}; the new model is not trusted")
        record.state = target
        self._run(record, _Context(previous=self.pipeline.engine.model))

    def is_running_job(self, job_id: str) -> bool:
        """``job_id`` is the install in flight (its record is saved until it ends)."""
        install = self.store.read().install
        return install is not None and install.command.get("job_id") == job_id

    def is_known_job(self, job_id: str) -> bool:
        state = self.store.read()
        return state.last_job_id == job_id or (state.install is not None and state.install.command.get("job_id") == job_id)

    # -- a new install -------------------------------------------------------
    def install(self, command: DeployCommand) -> None:
        state = self.store.read()
        record = InstallRecord(state=S.DOWNLOAD, command=command.model_dump(mode="json"),
                               target_slot=state.other_slot(), previous_slot=state.active_slot)
        # The baseline is the old model *before* this install competes with it for the
        # CPU (self-test and timing run beside it), or it would flatter the new model.
        self._run(record, _Context(previous=self.pipeline.engine.model, baseline=self.pipeline.engine.baseline()))

    # -- the machine ---------------------------------------------------------
    def _persist(self, record: InstallRecord) -> None:
        state = self.store.read()
        state.install = record
        self.store.write(state)

    def _enter(self, record: InstallRecord, new_state: InstallState) -> None:
        """Persist ``new_state`` before its step, fire the crash hook, tell the control plane."""
        record.state = new_state
        self.state = new_state
        self._persist(record)
        crash_point(new_state.value, str(record.command.get("model_version", "")))
        if new_state not in (S.IDLE, S.COMMIT, S.ROLLBACK, S.ABORT):
            self._report(record, job_state_for(new_state))

    def _run(self, record: InstallRecord, ctx: _Context) -> None:
        try:
            current = record.state
            while current is not S.IDLE:
                self._enter(record, current)
                ok = self._step(record, ctx)
                current = next_state(record.state, ok=ok)
        except _Interrupted:
            log.warning("[%s] stopping during install state %s; it resumes at start-up",
                        self.pipeline.name, record.state.value)
            return
        state = self.store.read()
        state.install = None
        state.last_job_id = str(record.command.get("job_id"))
        self.store.write(state)
        self.state = S.IDLE

    def _step(self, record: InstallRecord, ctx: _Context) -> bool:
        steps: dict[InstallState, Callable[[InstallRecord, _Context], bool]] = {
            S.DOWNLOAD: self._download,
            S.VERIFY: self._verify,
            S.STAGE: self._stage,
            S.SELF_TEST: self._self_test,
            S.SELECT_RUNTIME: self._select_runtime,
            S.SWITCH: self._switch,
            S.PROBATION: self._probation,
            S.COMMIT: self._commit,
            S.ROLLBACK: self._rollback,
            S.ABORT: self._abort,
        }
        try:
            return steps[record.state](record, ctx)
        except AgentError as exc:
            record.error_code, record.error = exc.code, str(exc)[:2000]
            record.rejected = isinstance(exc, UntrustedContentError)
            log.error("[%s] install step %s failed (%s): %s", self.pipeline.name, record.state.value, exc.code, exc)
            return False
        except _Interrupted:
            raise
        except Exception as exc:  # a bug or a runtime failing oddly must end in abort/rollback, not a dead thread
            log.exception("[%s] install step %s failed unexpectedly", self.pipeline.name, record.state.value)
            record.error_code, record.error = "internal_error", f"{type(exc).__name__}: {exc}"[:2000]
            return False

    def _fail(self, record: InstallRecord, code: str, message: str) -> bool:
        record.error_code, record.error = code, message[:2000]
        log.error("[%s] install step %s failed (%s): %s", self.pipeline.name, record.state.value, code, message)
        return False

    # -- steps ---------------------------------------------------------------
    def _download(self, record: InstallRecord, ctx: _Context) -> bool:
        ctx.fetched = self._fetch_package(DeployCommand.model_validate(record.command))
        return True

    def _verify(self, record: InstallRecord, ctx: _Context) -> bool:
        if ctx.fetched is None:  # only reachable in order, after the download
            return self._fail(record, "install_failed", "verify without a downloaded package")
        check_digests(ctx.fetched)
        self._refuse_downgrade(record, ctx.fetched.manifest)
        return True

    def _refuse_downgrade(self, record: InstallRecord, manifest: PackageManifest) -> None:
        """TUF stops old *metadata*, not an old *target*: the release counter stops going back.

        Raises:
            PackageDowngradeError: a lower release than this model line's floor, not signed as a rollback.
        """
        check_release_floor(manifest, self.store.read().release_floors,
                            rollback=bool(record.command.get("rollback", False)))

    def _raise_release_floor(self, record: InstallRecord, ctx: _Context, state: UpdateState) -> None:
        """A committed install sets its model line's floor: up to its release, or (a rollback) down to it."""
        manifest = ctx.manifest
        if manifest is None:  # resumed after a restart: the staged slot holds the manifest
            try:
                manifest = PackageManifest.from_bytes(
                    (self.store.slot_dir(record.target_slot) / MANIFEST_FILE).read_bytes())
            except (OSError, ValueError):
                log.warning("[%s] committed package's manifest unreadable; release floor unchanged",
                            self.pipeline.name)
                return
        floor = state.release_floors.get(manifest.model_name, 0)
        rollback = bool(record.command.get("rollback", False))
        state.release_floors[manifest.model_name] = manifest.release if rollback else max(floor, manifest.release)

    def _stage(self, record: InstallRecord, ctx: _Context) -> bool:
        if ctx.fetched is None:
            return self._fail(record, "install_failed", "stage without a verified package")
        fetched, ctx.fetched = ctx.fetched, None
        ctx.manifest = fetched.manifest
        ctx.package_dir = self.store.commit(fetched.manifest, fetched.manifest_bytes, fetched.files)
        return True

    def _self_test(self, record: InstallRecord, ctx: _Context) -> bool:
        package_id = str(record.command.get("package_id"))
        package_dir = self.store.slot_dir(record.target_slot)
        # Re-read from the slot and re-hash: what runs is what is on disk, not what was in memory.
        manifest = PackageStore.load_verified_dir(package_dir, package_id)
        ctx.manifest, ctx.package_dir = manifest, package_dir
        runtimes = {a.runtime for a in manifest.artifacts}
        candidates, skipped = plan_candidates(
            manifest, hardware_profile=self.settings.hardware_profile,
            profile_runtimes=self.settings.profile_runtimes,
            available={runtime: available_devices(runtime) for runtime in runtimes},
        )
        measurements: list[RuntimeMeasurement] = list(skipped)
        ctx.accepted = []
        for candidate in candidates:
            measurement, backend, sample = self_test(candidate, manifest, package_dir, threads=self.settings.threads)
            measurements.append(measurement)
            if backend is not None:
                ctx.accepted.append((candidate, backend, sample))
        record.measurements = [m.model_dump(mode="json") for m in measurements]
        if not ctx.accepted:
            reasons = "; ".join(f"{m.runtime}/{m.precision}/{m.device}: {m.reason}" for m in measurements)
            return self._fail(record, "self_test_failed", f"no runtime passed the self-test: {reasons}")
        return True

    def _select_runtime(self, record: InstallRecord, ctx: _Context) -> bool:
        if ctx.manifest is None or not ctx.accepted:  # only reachable in order, after self-test
            return self._fail(record, "install_failed", "select_runtime without a self-tested package")
        measurements = [RuntimeMeasurement.model_validate(m) for m in record.measurements]
        timed: list[RuntimeMeasurement] = []
        for candidate, backend, sample in ctx.accepted:
            latency_ms = time_backend(backend, sample, runs=self.settings.timing_runs)
            for i, m in enumerate(measurements):
                if m.accepted and m.file == candidate.artifact.file and m.device == (candidate.device or "CPU") \
                        and m.runtime == candidate.artifact.runtime:
                    measurements[i] = m.model_copy(update={"median_latency_ms": latency_ms})
                    timed.append(measurements[i])
        record.measurements = [m.model_dump(mode="json") for m in measurements]
        best = fastest(timed)
        assert best is not None
        candidate, backend, _ = ctx.accepted[best]
        ctx.accepted = []
        gc.collect()  # the losers' sessions hold the memory the budget check must not count
        ctx.selected = LoadedModel(manifest=ctx.manifest, artifact=candidate.artifact, backend=backend)
        record.runtime = ctx.selected.runtime_label
        rss_mb = self._process.memory_info().rss / 2**20
        if rss_mb > self.settings.memory_budget_mb:
            ctx.selected = None
            gc.collect()
            return self._fail(record, "memory_budget",
                              f"agent RSS would be {rss_mb:.0f} MB with the new model loaded beside the old; "
                              f"the budget is {self.settings.memory_budget_mb:.0f} MB")
        log.info("[%s] selected %s (%.3f ms median) out of %d candidates", self.pipeline.name, record.runtime,
                 timed[best].median_latency_ms or 0.0, len(measurements))
        return True

    def _switch(self, record: InstallRecord, ctx: _Context) -> bool:
        if ctx.selected is None:
            return self._fail(record, "install_failed", "switch without a selected model")
        engine = self.pipeline.engine
        ctx.previous = engine.model
        if ctx.baseline == Baseline():
            ctx.baseline = engine.baseline()
        ctx.watch = ProbationWatch(ctx.selected)
        engine.swap(ctx.selected, watch=ctx.watch)
        state = self.store.read()
        state.slots[record.target_slot] = SlotContent(
            package_id=ctx.selected.manifest.package_id, model_version=ctx.selected.version,
            artifact_file=ctx.selected.artifact.file, device=ctx.selected.backend.device,
            runtime=ctx.selected.runtime_label)
        state.active_slot = record.target_slot
        state.install = record
        self.store.write(state)
        self._on_serving_changed()
        return True

    def _probation(self, record: InstallRecord, ctx: _Context) -> bool:
        if ctx.watch is None:
            return self._fail(record, "install_failed", "probation without a switched model")
        limits = self.settings.probation
        while True:
            evidence = ctx.watch.evidence()
            verdict, reason = judge(evidence, ctx.baseline, limits)
            if verdict is not Verdict.CONTINUE:
                break
            if self._stop.wait(PROBATION_POLL_S):
                raise _Interrupted
        record.probation = {"passed": 1.0 if verdict is Verdict.PASS else 0.0,
                            **evidence.as_report(ctx.baseline)}
        log.info("[%s] probation %s (%s): %s", self.pipeline.name, verdict.value, reason, record.probation)
        if verdict is Verdict.FAIL:
            return self._fail(record, f"probation_{reason}", f"probation failed: {reason}")
        return True

    def _commit(self, record: InstallRecord, ctx: _Context) -> bool:
        self.pipeline.engine.end_watch()
        state = self.store.read()
        state.boot = None  # probation proved the new model healthy; it starts uncounted
        self._raise_release_floor(record, ctx, state)
        self.store.write(state)
        self._boot_unconfirmed = False
        ctx.previous = None  # the old model's memory is released; its slot stays as the fallback
        self._report(record, JobState.SUCCEEDED)
        self._on_serving_changed()
        return True

    def _rollback(self, record: InstallRecord, ctx: _Context) -> bool:
        state = self.store.read()
        engine = self.pipeline.engine
        previous_content = state.content(record.previous_slot)
        model: LoadedModel | None = None
        if previous_content is not None and record.previous_slot is not None:
            if ctx.previous is not None and ctx.previous.manifest.package_id == previous_content.package_id:
                model = ctx.previous  # still loaded and warm: the rollback is instant
            else:
                model = self._load_slot(record.previous_slot, previous_content)
        engine.swap(model)
        state.active_slot = record.previous_slot if model is not None else None
        state.slots[record.target_slot] = None
        state.install = record
        self.store.write(state)
        log.warning("[%s] rolled back to %s (%s)", self.pipeline.name, model.version if model else "nothing",
                    record.error_code)
        self._report(record, JobState.FAILED)
        self._on_serving_changed()
        return True

    def _abort(self, record: InstallRecord, ctx: _Context) -> bool:
        ctx.accepted, ctx.selected = [], None
        state = self.store.read()
        if state.active_slot != record.target_slot:
            state.slots[record.target_slot] = None  # whatever was staged there is not a package
        state.install = record
        self.store.write(state)
        # Refused content (bad signature, rollback, wrong profile, bad digest) is a rejection;
        # delivery and install trouble is a failure that a retry may fix.
        self._report(record, JobState.REJECTED if record.rejected else JobState.FAILED)
        return True

    # -- helpers -------------------------------------------------------------
    def _load_slot(self, slot: SlotName, content: SlotContent) -> LoadedModel | None:
        directory = self.store.slot_dir(slot)
        segfault_point("load", content.model_version)
        try:
            manifest = PackageStore.load_verified_dir(directory, content.package_id)
            return load_model(manifest, directory, threads=self.settings.threads,
                              artifact_file=content.artifact_file, device=content.device)
        except AgentError as exc:
            log.error("[%s] model %s in slot %s cannot be served: %s", self.pipeline.name, content.model_version,
                      slot, exc)
            return None

    def _report(self, record: InstallRecord, job_state: JobState) -> None:
        model = self.pipeline.engine.model
        final = job_state.is_final
        self._send(JobStatusReport(
            device_id=self.device_id,
            job_id=str(record.command.get("job_id")),
            package_id=str(record.command.get("package_id")),
            state=job_state,
            error_code=record.error_code if final and job_state is not JobState.SUCCEEDED else None,
            error=record.error if final and job_state is not JobState.SUCCEEDED else None,
            running_model_version=model.version if model else None,
            install_state=record.state.value,
            runtime=record.runtime,
            runtime_measurements=[RuntimeMeasurement.model_validate(m) for m in record.measurements],
            probation=record.probation,
        ))

