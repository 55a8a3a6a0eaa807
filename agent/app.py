"""Wires the agent together: uplink, capture, inference, updates and telemetry.

Collaborators are passed in (``source``, ``fetcher``) so tests can hand the real
agent a synthetic camera or a hostile artifact server.
"""

from __future__ import annotations

import logging
import queue
import threading
from datetime import UTC, datetime
from pathlib import Path

import psutil

from agent import __version__
from agent.capture.latest import FrameSlot
from agent.capture.source import FrameSource, open_source
from agent.config import AgentConfig
from agent.contract import (
    ContractError,
    DeployCommand,
    DeviceState,
    JobState,
    JobStatusReport,
    PackageManifest,
    StatusReport,
    TelemetryReport,
    Topics,
    parse_command,
)
from agent.errors import AgentError, InstallError, UntrustedContentError
from agent.infer.engine import InferenceEngine, LoadedModel, load_model
from agent.runtime.base import RuntimeLoadError
from agent.security import NotEnrolledError, PackageUpdater, load_director_key, verify_command
from agent.telemetry.window import WindowStats
from agent.update.fetcher import ArtifactFetcher, HttpFetcher
from agent.update.installer import fetch_and_verify
from agent.update.store import ActivePackage, PackageStore
from agent.uplink.mqtt import MqttUplink

log = logging.getLogger(__name__)


class AgentApp:
    def __init__(
        self,
        config: AgentConfig,
        *,
        source: FrameSource | None = None,
        fetcher: ArtifactFetcher | None = None,
    ) -> None:
        self.config = config
        self.topics = Topics(config.topic_prefix)
        self.store = PackageStore(config.state_dir)
        self.source = source or open_source(config.source, loop=config.source_loop, file_fps=config.target_fps)
        self.fetcher = fetcher or HttpFetcher(
            timeout_s=config.download_timeout_s, deadline_s=config.download_deadline_s
        )
        # Packages come only through TUF, anchored at the root received at enrollment.
        api_url = config.api_url.rstrip("/")
        self.updater = PackageUpdater(
            metadata_dir=config.state_dir / "tuf" / "metadata",
            metadata_url=config.tuf_metadata_url or f"{api_url}/tuf/metadata/",
            targets_url=config.tuf_targets_url or f"{api_url}/tuf/targets/",
            trusted_root=config.tuf_root_file,
            fetcher=self.fetcher,
        )
        # Without the director key every command is refused (reported as not_enrolled).
        self.director_key = load_director_key(config.director_key_file) if config.director_key_file else None
        self.update_check_error: str | None = None
        self.slot = FrameSlot()
        self.stats = WindowStats()
        self.engine = InferenceEngine(self.slot, self.stats)
        self.rejected_commands = 0
        self._camera_ok = True
        self._commands: queue.Queue[DeployCommand] = queue.Queue(maxsize=100)
        self._stop = threading.Event()
        self._process = psutil.Process()
        self.uplink = MqttUplink(
            device_id=config.device_id,
            broker_url=config.mqtt_url,
            topics=self.topics,
            status_provider=self._status,
            on_command=self._receive_command,
            keepalive_s=config.keepalive_s,
            tls_ca_file=str(config.mqtt_ca_file) if config.mqtt_ca_file else None,
            tls_cert_file=str(config.mqtt_cert_file) if config.mqtt_cert_file else None,
            tls_key_file=str(config.mqtt_key_file) if config.mqtt_key_file else None,
        )
        self._threads = [
            threading.Thread(target=self._capture_loop, name="capture", daemon=True),
            threading.Thread(target=self._command_loop, name="commands", daemon=True),
            threading.Thread(target=self._telemetry_loop, name="telemetry", daemon=True),
        ]

    # -- lifecycle -----------------------------------------------------------
    def start(self) -> None:
        self._restore_active_model()
        self.engine.start()
        for thread in self._threads:
            thread.start()
        self.uplink.start()

    def stop(self) -> None:
        self._stop.set()
        self.engine.stop()
        self.uplink.stop()
        self.source.close()

    def run_forever(self) -> None:
        self.start()
        try:
            while not self._stop.wait(0.5):
                pass
        finally:
            self.stop()

    def request_stop(self) -> None:
        self._stop.set()

    def _restore_active_model(self) -> None:
        active = self.store.active()
        if active is None:
            log.info("no model installed yet; waiting for a deployment")
            return
        try:
            manifest = self.store.load_verified(active.package_id)
            self.engine.swap(
                load_model(manifest, self.store.package_dir(active.package_id), threads=self.config.inference_threads)
            )
        except (AgentError, RuntimeLoadError) as exc:
            log.error("stored model %s cannot be served: %s", active.model_version, exc)

    # -- reports -------------------------------------------------------------
    def _status(self) -> StatusReport:
        model = self.engine.model
        return StatusReport(
            device_id=self.config.device_id,
            state=DeviceState.ONLINE,
            agent_version=__version__,
            hardware_profile=self.config.hardware_profile,
            running_model_version=model.version if model else None,
            running_package_id=model.manifest.package_id if model else None,
            runtime=model.artifact.runtime if model else None,
        )

    def _report_job(self, command: DeployCommand, state: JobState, error: AgentError | None = None) -> None:
        model = self.engine.model
        report = JobStatusReport(
            device_id=self.config.device_id,
            job_id=command.job_id,
            package_id=command.package_id,
            state=state,
            error_code=error.code if error else None,
            error=str(error) if error else None,
            running_model_version=model.version if model else None,
        )
        self.uplink.publish(self.topics.job(self.config.device_id, command.job_id), report)

    def _telemetry_loop(self) -> None:
        self._process.cpu_percent(None)  # prime: the first call always returns 0
        while not self._stop.wait(self.config.telemetry_interval_s):
            window = self.stats.snapshot_and_reset()
            model = self.engine.model
            report = TelemetryReport(
                device_id=self.config.device_id,
                model_version=model.version if model else None,
                package_id=model.manifest.package_id if model else None,
                runtime=model.artifact.runtime if model else None,
                window_s=window.window_s,
                frames=window.frames,
                fps=window.fps,
                p50_latency_ms=window.p50_latency_ms,
                p95_latency_ms=window.p95_latency_ms,
                mean_confidence=window.mean_confidence,
                class_counts=window.class_counts,
                inference_errors=window.inference_errors,
                camera_ok=self._camera_ok,
                cpu_percent=self._process.cpu_percent(None),
                memory_mb=round(self._process.memory_info().rss / 2**20, 1),
                rejected_commands=self.rejected_commands,
                update_check_error=self.update_check_error,
            )
            self.uplink.publish(self.topics.telemetry(self.config.device_id), report)

    # -- capture -------------------------------------------------------------
    def _capture_loop(self) -> None:
        while not self._stop.is_set():
            frame = self.source.read()
            if frame is None:
                if self._camera_ok:
                    log.warning("camera source %s returned no frame", self.config.source)
                self._camera_ok = False
                self._stop.wait(0.1)
                continue
            self._camera_ok = True
            self.slot.put(frame)

    # -- commands ------------------------------------------------------------
    def _receive_command(self, payload: bytes) -> None:
        """Called on paho's thread: validate cheaply and hand off; never block."""
        try:
            command = parse_command(payload)
        except ContractError as exc:
            self.rejected_commands += 1
            log.error("rejected malformed command: %s", exc)
            return
        # Addressing, signature, expiry and sequence are checked (and rejections reported)
        # in _check_command, off paho's thread.
        try:
            self._commands.put_nowait(command)
        except queue.Full:
            self.rejected_commands += 1
            log.error("command queue full; dropped job %s", command.job_id)

    def _command_loop(self) -> None:
        while not self._stop.is_set():
            try:
                command = self._commands.get(timeout=0.5)
            except queue.Empty:
                continue
            self._handle_deploy(command)

    def _check_command(self, command: DeployCommand) -> None:
        """Director signature, addressee, expiry, sequence; then persist the sequence (anti-replay).

        Raises:
            UntrustedContentError: a subclass naming why the command is refused.
        """
        if self.director_key is None:
            raise NotEnrolledError("no director public key configured: enroll the device first")
        verify_command(command, director_key=self.director_key, device_id=self.config.device_id,
                       last_seq=self.store.last_command_seq(), now=datetime.now(UTC))
        self.store.set_last_command_seq(command.seq)

    def _reject_command(self, command: DeployCommand, exc: AgentError) -> None:
        self.rejected_commands += 1
        log.error("rejected command %s (%s): %s", command.job_id, exc.code, exc)
        self._report_job(command, JobState.REJECTED, exc)

    def _fetch_package(self, command: DeployCommand) -> tuple[PackageManifest, Path]:
        """Refresh TUF metadata and fetch the package the (verified) command names.

        Records the outcome of the metadata check for telemetry (a frozen repository shows there).
        """
        try:
            result = fetch_and_verify(
                command,
                updater=self.updater,
                store=self.store,
                hardware_profile=self.config.hardware_profile,
                max_package_bytes=self.config.max_package_bytes,
                on_state=lambda state: self._report_job(command, state),
            )
        except AgentError as exc:
            self.update_check_error = exc.code
            raise
        self.update_check_error = None
        return result

    def _handle_deploy(self, command: DeployCommand) -> None:
        # Verify before anything else, including the "already running" shortcut:
        # an unverified command must not even earn a success report.
        try:
            self._check_command(command)
        except AgentError as exc:
            self._reject_command(command, exc)
            return
        current = self.engine.model
        if current is not None and current.manifest.package_id == command.package_id:
            # A redelivered command (persistent session) for what already runs.
            self._report_job(command, JobState.SUCCEEDED)
            return
        self._report_job(command, JobState.RECEIVED)
        try:
            manifest, package_dir = self._fetch_package(command)
            self._report_job(command, JobState.INSTALLING)
            try:
                model: LoadedModel = load_model(manifest, package_dir, threads=self.config.inference_threads)
            except RuntimeLoadError as exc:
                raise InstallError(str(exc)) from exc
        except AgentError as exc:
            # Refused content (bad signature, rollback, expiry, wrong profile...) is a rejection;
            # delivery and install trouble is a failure that a retry may fix.
            state = JobState.REJECTED if isinstance(exc, UntrustedContentError) else JobState.FAILED
            log.error(
                "deployment %s of package %s %s (%s): %s; still serving %s",
                command.job_id,
                command.package_id,
                state.value,
                exc.code,
                exc,
                current.version if current else "nothing",
            )
            self._report_job(command, state, exc)
            return
        self.engine.swap(model)
        self.store.set_active(ActivePackage(manifest.package_id, manifest.model_version))
        self._report_job(command, JobState.SUCCEEDED)
        self.uplink.publish_status()
        log.info("deployment %s succeeded: serving %s", command.job_id, manifest.model_version)

