"""Wires the agent together: uplink, pipelines (capture + inference), installs and telemetry.

Collaborators are passed in (``source``, ``fetcher``) so tests can hand the real
agent a synthetic camera or a hostile artifact server.
"""

from __future__ import annotations

import logging
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import psutil

from agent import __version__
from agent.cameras import (
    AppliedCameraSet,
    CameraPlan,
    CameraSetFile,
    adopt_package,
    device_problems,
    device_stores,
    find_package,
    held_packages,
    pipeline_config_for,
    plan_cameras,
    reported_spec,
    shared_model_problems,
    spec_of,
)
from agent.capture.source import FrameSource, limit_opencv_threads, open_source
from agent.capture.stream import StreamSource
from agent.config import AgentConfig, PipelineConfig
from agent.contract import (
    CameraConfigCommand,
    CameraSetStatus,
    CameraSpec,
    CameraState,
    Command,
    ContractError,
    DeployCommand,
    DeviceState,
    JobState,
    JobStatusReport,
    PipelineStatus,
    StatusReport,
    TelemetryReport,
    Topics,
    parse_any_command,
)
from agent.contract.broker_url import parse_broker_url
from agent.contract.messages import DetectionWindow, ResyncCommand, message_kind
from agent.errors import AgentError, CameraApplyError, CommandQueueFullError, SignatureError
from agent.infer.batcher import BatchSettings
from agent.infer.engine import InferenceEngine, ResultSink, load_model, loaded_model_count
from agent.infer.serving import ModelGroup
from agent.infer.shadow import ShadowRunner, ShadowSet
from agent.metrics import AgentMetrics, MetricsServer
from agent.pipeline import Pipeline
from agent.profiles import PROFILES_DIR, FirmwareProfile, load_profile
from agent.results import JsonLinesSink
from agent.security import (
    NotEnrolledError,
    PackageUpdater,
    ReplayedCommandError,
    check_fresh,
    verify_signature,
)
from agent.security.bundle import (
    BundleFormatError,
    BundleQueue,
    bundle_updater,
    newest_trusted_root,
    outcome_of,
    verify_bundle,
)
from agent.security.enroll import current_broker_url, remember_broker_url
from agent.security.keyring import DirectorKeyring
from agent.telemetry.drift import agent_monitoring
from agent.update.fetcher import ArtifactFetcher, HttpFetcher
from agent.update.installer import FetchedPackage, check_digests, fetch_verified
from agent.update.machine import InstallState
from agent.update.manager import InstallManager, InstallSettings
from agent.update.probation import ProbationLimits
from agent.update.store import PackageStore
from agent.uplink.mqtt import MqttResultsSink, MqttUplink
from agent.uplink.outbox import Outbox

log = logging.getLogger(__name__)

# Used when neither the config nor a firmware profile sets a memory budget.
DEFAULT_MEMORY_BUDGET_MB = 1024.0
# How long a clean stop waits for buffered reports to reach the broker.
STOP_FLUSH_S = 5.0


def _broker_password(config: AgentConfig) -> str | None:
    """The device API token as MQTT password for a plain-TCP broker (the embedded development
    broker knows devices by it); None over TLS, where the client certificate says who we are."""
    if config.api_token_file is None or parse_broker_url(config.mqtt_url).tls:
        return None
    try:
        return config.api_token_file.read_text().strip() or None
    except OSError as exc:
        log.warning("cannot read the API token file %s (%s): connecting without credentials",
                    config.api_token_file, exc)
        return None


class _ReportBudget:
    """At most ``per_minute`` reports a minute (a token bucket), safe across threads."""

    def __init__(self, per_minute: int) -> None:
        self._capacity = float(per_minute)
        self._tokens = float(per_minute)
        self._refill_per_s = per_minute / 60.0
        self._at = time.monotonic()
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self._capacity, self._tokens + (now - self._at) * self._refill_per_s)
            self._at = now
            if self._tokens < 1.0:
                return False
            self._tokens -= 1.0
            return True


def _load_profile(config: AgentConfig) -> FirmwareProfile | None:
    path = (config.profiles_dir or PROFILES_DIR) / f"{config.hardware_profile}.yaml"
    if not path.exists():
        log.warning("no firmware profile %s; every runtime the package offers is a candidate", path)
        return None
    return load_profile(path)


class AgentApp:
    def __init__(
        self,
        config: AgentConfig,
        *,
        source: FrameSource | None = None,
        fetcher: ArtifactFetcher | None = None,
        config_path: Path | None = None,
    ) -> None:
        self.config = config
        # Where the config came from: a broker URL learnt from the control plane is written back there.
        self.config_path = config_path
        self.topics = Topics(config.topic_prefix)
        # The cameras: the set last applied from the control plane (saved in the state dir), else
        # the config file's pipelines (revision 0). agent/cameras.py; docs/agent.md.
        self.camera_file = CameraSetFile(config.state_dir)
        file_configs = config.pipeline_configs()
        self._file_pipelines = {p.name: p for p in file_configs}
        saved_cameras = self.camera_file.load()
        pipeline_configs = (file_configs if saved_cameras is None else
                            [pipeline_config_for(spec, config=config, base=self._file_pipelines.get(spec.name))
                             for spec in saved_cameras.cameras])
        self.cameras_revision = 0 if saved_cameras is None else saved_cameras.revision
        self.camera_specs: dict[str, CameraSpec] = {p.name: spec_of(p) for p in pipeline_configs}
        # The last camera command refused: (revision, error code, reason), reported in the status.
        self.camera_rejection: tuple[int, str, str] | None = None
        self._camera_states_reported: tuple[tuple[str, str, str | None], ...] = ()
        # The config file's first model's store also keeps the device-wide state (the command
        # sequence): taken from the config file, not the applied camera set, so that a camera
        # change never moves it (a lower remembered seq would let old commands replay).
        self.store = self.primary_store(config)
        self.profile = _load_profile(config)
        # Keepalive, reconnect backoff and download timeouts: the profile's, unless the config overrides them.
        self.network = config.network(self.profile.network if self.profile else None)
        self.fetcher = fetcher or HttpFetcher(
            timeout_s=self.network.download_timeout_s, deadline_s=self.network.download_deadline_s,
            reconnect_min_s=self.network.download_retry_min_s, reconnect_max_s=self.network.download_retry_max_s,
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
        # The director keys: those the newest verified TUF root lists, else the enrollment key.
        # Without any, every command is refused (reported as not_enrolled).
        self.director_keys = DirectorKeyring(listed_in_root=self.updater.director_key_pems,
                                             enrollment_key_file=config.director_key_file,
                                             refresh_metadata=self.updater.refresh)
        # Commands signed by a key we do not know yet (a rotation we have not seen): a few wait
        # here for one metadata refresh, apart from the verified queue they can never crowd.
        self._unknown_key_commands: queue.Queue[Command] = queue.Queue(maxsize=4)
        # Bundles handed over by `edgefleet-agent install-bundle`, and the last report of each
        # bundle job being installed (its outcome, for the CLI waiting on it).
        self.bundles = BundleQueue(config.state_dir)
        self._bundle_reports: dict[str, JobStatusReport | None] = {}
        self.update_check_error: str | None = None
        self.rejected_commands = 0
        # Well-formed messages of another kind on the command topic (not commands: ignored).
        self.ignored_messages = 0
        self._rejected_lock = threading.Lock()  # counted on paho's thread and on the command thread
        self._forged_reports = _ReportBudget(config.forged_command_reports_per_minute)
        self.metrics = AgentMetrics(config.device_id, __version__)
        self._metrics_server: MetricsServer | None = None
        # Only commands whose director signature and addressee hold are queued.
        self._commands: queue.Queue[Command] = queue.Queue(maxsize=config.command_queue_depth)
        self._stop = threading.Event()
        self._process = psutil.Process()

        limit_opencv_threads(config.opencv_threads)
        self.sinks: list[ResultSink] = []
        if config.results_jsonl_path is not None:
            self.sinks.append(JsonLinesSink(config.results_jsonl_path, max_bytes=config.results_max_bytes))
        if config.results_mqtt_url:
            self.sinks.append(MqttResultsSink(config.results_mqtt_url, config.results_mqtt_topic,
                                              client_id=f"ef-results-{config.device_id}"))
        self._settings = self._install_settings()
        self.batching = self._batch_settings()
        # Cameras (pipelines) by name; the models serving them (model groups), with their
        # install managers, by model name. Cameras naming one model share its loaded instance.
        self.pipelines: dict[str, Pipeline] = {}
        self.groups: dict[str, ModelGroup] = {}
        self.managers: dict[str, InstallManager] = {}
        self._model_of: dict[str, str] = {}
        self._cameras_lock = threading.Lock()
        self._started = False
        for index, pipeline_config in enumerate(pipeline_configs):
            self._attach_camera(pipeline_config, source if index == 0 else None)

        self.outbox = Outbox(config.state_dir / "outbox.sqlite", max_reports=config.max_outbox_reports)
        self.uplink = MqttUplink(
            device_id=config.device_id,
            broker_url=config.mqtt_url,
            topics=self.topics,
            status_provider=self._status,
            on_command=self._receive_command,
            outbox=self.outbox,
            keepalive_s=self.network.keepalive_s,
            reconnect_min_s=self.network.reconnect_min_s,
            reconnect_max_s=self.network.reconnect_max_s,
            tls_ca_file=str(config.mqtt_ca_file) if config.mqtt_ca_file else None,
            tls_cert_file=str(config.mqtt_cert_file) if config.mqtt_cert_file else None,
            tls_key_file=str(config.mqtt_key_file) if config.mqtt_key_file else None,
            password=_broker_password(config),
            # The broker may move (a restarted development control plane, a migrated broker): after
            # repeated connection failures the agent asks the API, with its device token, where it is now.
            resolve_broker_url=self._current_broker_url if config.api_token_file else None,
            resolve_after_failures=config.broker_resolve_after_failures,
            on_broker_moved=self._remember_broker_url,
        )
        # Shadow runners: a candidate beside the active model, per pipeline.
        self.shadows = ShadowSet()
        # Drift windows and samples, fed with each engine's raw scores.
        self.monitoring = agent_monitoring(
            config=config.monitoring, device_id=config.device_id, state_dir=config.state_dir, topics=self.topics,
            api_url=config.api_url, api_token_file=config.api_token_file, publish=self.uplink.publish)
        for name, pipeline in self.pipelines.items():
            self._hook_up(name, pipeline)
        self._threads = [
            threading.Thread(target=self._command_loop, name="commands", daemon=True),
            threading.Thread(target=self._telemetry_loop, name="telemetry", daemon=True),
        ]

    @staticmethod
    def primary_store(config: AgentConfig) -> PackageStore:
        """The store of the config file's first model (device-wide state: command seq, release floors)."""
        return PackageStore(config.state_dir, config.pipeline_configs()[0].model_group)

    def _current_broker_url(self) -> str | None:
        assert self.config.api_token_file is not None
        return current_broker_url(self.config.api_url, self.config.device_id, self.config.api_token_file)

    def _remember_broker_url(self, mqtt_url: str) -> None:
        if self.config_path is not None:
            remember_broker_url(self.config_path, mqtt_url)
            log.info("wrote the new broker URL %s to %s", mqtt_url, self.config_path)

    def _install_settings(self) -> InstallSettings:
        config, profile = self.config, self.profile
        threads = config.inference_threads or (profile.threads if profile else 1)
        budget_mb = config.memory_budget_mb or (profile.memory_budget_mb if profile else DEFAULT_MEMORY_BUDGET_MB)
        return InstallSettings(
            hardware_profile=config.hardware_profile,
            profile_runtimes=[choice.model_dump() for choice in profile.runtimes] if profile else None,
            threads=threads,
            max_package_bytes=config.max_package_bytes,
            memory_budget_mb=float(budget_mb),
            timing_runs=config.runtime_timing_runs,
            max_resumes=config.max_install_resumes,
            max_boot_attempts=config.max_boot_attempts,
            probation=ProbationLimits(
                window_s=config.probation_window_s,
                min_frames=config.probation_min_frames,
                max_error_ratio=config.probation_max_error_ratio,
                max_invalid_outputs=config.probation_max_invalid_outputs,
                max_p95_latency_ratio=config.probation_max_p95_latency_ratio,
                min_confidence_ratio=config.probation_min_confidence_ratio,
                max_wait_s=config.probation_max_wait_s,
            ),
        )

    def _batch_settings(self) -> BatchSettings:
        config, profile = self.config, self.profile
        max_batch = config.max_batch or (profile.max_batch if profile else 1)
        deadline_ms = config.batch_deadline_ms if config.batch_deadline_ms is not None else (
            profile.batch_deadline_ms if profile else 0.0)
        workers = config.batch_workers or (profile.batch_workers if profile else 1)
        return BatchSettings(max_batch=max_batch, deadline_s=deadline_ms / 1000.0, workers=workers)

    def _group(self, name: str) -> tuple[ModelGroup, bool]:
        """The model group ``name``, created (with its install manager) when new; (group, created)."""
        group = self.groups.get(name)
        if group is not None:
            return group, False
        group = ModelGroup.create(name, self.batching)
        store = self.store if name == self.store.root.name else PackageStore(self.config.state_dir, name)
        self.groups[name] = group
        self.managers[name] = InstallManager(
            device_id=self.config.device_id, pipeline=group, store=store, fetch_package=self._fetch_package,
            settings=self._settings, send_job_report=self._send_job_report,
            on_serving_changed=self._serving_changed, stop=self._stop,
        )
        return group, True

    def _attach_camera(self, pipeline_config: PipelineConfig, source: FrameSource | None = None) -> Pipeline:
        """Build the camera's pipeline on its model's shared engine (the group is created when new).

        Raises:
            ValueError: a camera of that name exists already.
        """
        if pipeline_config.name in self.pipelines:
            raise ValueError(f"camera {pipeline_config.name!r} exists already")
        group, created = self._group(pipeline_config.model_group)
        try:
            pipeline = self._build_pipeline(pipeline_config, source, group.engine)
        except Exception:
            if created:
                del self.groups[group.name], self.managers[group.name]
            raise
        if created and pipeline_config.package_id is not None:
            self._serve_assigned_package(self.managers[group.name], pipeline_config.package_id)
        group.cameras.append(pipeline.name)
        self.pipelines[pipeline.name] = pipeline
        self._model_of[pipeline.name] = group.name
        return pipeline

    def _hook_up(self, name: str, pipeline: Pipeline) -> None:
        """Feed a camera's scores and boxes to drift monitoring, samplers and its model's shadow."""
        model = self._model_of[name]
        pipeline.output_hook = self.shadows.hook(model, self.monitoring.hook(name))
        pipeline.detection_hook = self.shadows.detection_hook(model, self.monitoring.detection_hook(name))

    # -- cameras at run time -------------------------------------------------
    def add_camera(self, pipeline_config: PipelineConfig) -> Pipeline:
        """Start serving a new camera on a running agent, on the model its config names.

        A camera joining an existing model is served by the instance already loaded (from
        its next batch on); a new model name starts empty and waits for a deploy, or
        restores what its A/B slots hold from an earlier run.

        Raises:
            ValueError: a camera of that name exists already, or its source cannot be opened.
        """
        with self._cameras_lock:
            created = pipeline_config.model_group not in self.groups
            pipeline = self._attach_camera(pipeline_config)
            self._hook_up(pipeline.name, pipeline)
            group = self.groups[pipeline_config.model_group]
            if self._started:
                if created:
                    self.managers[group.name].restore()
                    group.engine.start()
                pipeline.start()
        self._serving_changed()
        return pipeline

    def remove_camera(self, name: str) -> None:
        """Stop a camera on a running agent; its model stays loaded while other cameras use it.

        The last camera of a model takes the model down with it (its A/B slots stay on disk
        for a later camera of the same model).

        Raises:
            KeyError: no camera of that name.
        """
        with self._cameras_lock:
            pipeline = self.pipelines.pop(name)
            group = self.groups[self._model_of.pop(name)]
            group.cameras.remove(name)
            pipeline.stop()
            if not group.cameras and self.managers[group.name].state is InstallState.IDLE:
                group.engine.stop()
                group.engine.swap(None)
                self.shadows.stop(group.name)
                del self.groups[group.name], self.managers[group.name]
        self._serving_changed()

    def _manager_for(self, target: str | None) -> InstallManager | None:
        """A deploy's target: a model name, or a camera's name (its model); None = the first model."""
        if not target:
            return next(iter(self.managers.values()), None)
        return self.managers.get(target) or self.managers.get(self._model_of.get(target, ""))

    def _build_pipeline(self, pipeline_config: PipelineConfig, source: FrameSource | None,
                        engine: InferenceEngine | None = None) -> Pipeline:
        source_fps = pipeline_config.target_fps if pipeline_config.source_fps is None else pipeline_config.source_fps
        return Pipeline(
            pipeline_config.name,
            source or open_source(pipeline_config.source_url(), loop=pipeline_config.source_loop,
                                  file_fps=source_fps, name=pipeline_config.name,
                                  stream=pipeline_config.stream_settings(),
                                  secrets_dir=self.config.camera_secrets_dir),
            target_fps=pipeline_config.target_fps,
            policy=pipeline_config.frame_policy,
            queue_depth=pipeline_config.frame_queue_depth,
            sinks=self.sinks,
            source_label=pipeline_config.source,
            engine=engine,
            roi=pipeline_config.roi,
        )

    @property
    def engine(self) -> InferenceEngine:
        """The first model's inference engine (the single-camera case)."""
        return next(iter(self.groups.values())).engine

    # -- lifecycle -----------------------------------------------------------
    def start(self) -> None:
        for manager in self.managers.values():
            manager.restore()
        with self._cameras_lock:
            for group in self.groups.values():
                group.engine.start()
            for pipeline in self.pipelines.values():
                pipeline.start()
            self._started = True
        for thread in self._threads:
            thread.start()
        self.uplink.start()
        if self.config.metrics_port is not None:
            self._metrics_server = MetricsServer(self.metrics, host=self.config.metrics_host,
                                                 port=self.config.metrics_port).start()

    def stop(self) -> None:
        """Stop capture, finish frames in hand, send the last telemetry and buffered reports, go offline."""
        self._stop.set()
        with self._cameras_lock:
            for pipeline in self.pipelines.values():
                pipeline.stop()
            for group in self.groups.values():
                group.engine.drain(5.0)
                group.engine.stop()
        for thread in self._threads:
            thread.join(timeout=10)
        self._publish_telemetry()
        self.uplink.flush(STOP_FLUSH_S)
        self.uplink.stop()
        for sink in self.sinks:
            close: Callable[[], None] | None = getattr(sink, "close", None)
            if close is not None:
                close()
        self.outbox.close()
        if self._metrics_server is not None:
            self._metrics_server.stop()

    def run_forever(self) -> None:
        self.start()
        try:
            while not self._stop.wait(0.5):
                pass
        finally:
            self.stop()

    def request_stop(self) -> None:
        self._stop.set()

    # -- reports -------------------------------------------------------------
    def _status(self) -> StatusReport:
        # Called on paho's thread while cameras may come and go: work on snapshots (list() of a
        # dict is taken whole under the GIL). Every camera may have been removed: nothing is served.
        pipelines = list(self.pipelines.items())
        model = pipelines[0][1].engine.model if pipelines else None
        install_states = [m.state for m in list(self.managers.values()) if m.state is not InstallState.IDLE]
        return StatusReport(
            device_id=self.config.device_id,
            state=DeviceState.ONLINE,
            agent_version=__version__,
            hardware_profile=self.config.hardware_profile,
            running_model_version=model.version if model else None,
            running_package_id=model.manifest.package_id if model else None,
            runtime=model.artifact.runtime if model else None,
            install_state=(install_states[0] if install_states else InstallState.IDLE).value,
            pipelines=[
                PipelineStatus(
                    name=name,
                    model_version=p.engine.model.version if p.engine.model else None,
                    package_id=p.engine.model.manifest.package_id if p.engine.model else None,
                    runtime=p.engine.model.runtime_label if p.engine.model else None,
                )
                for name, p in pipelines
            ],
            cameras=self._camera_status(),
        )

    def _camera_states(self) -> list[CameraState]:
        states: list[CameraState] = []
        pipelines = dict(list(self.pipelines.items()))
        for name, spec in list(self.camera_specs.items()):  # in the order of the applied set
            pipeline = pipelines.get(name)
            if pipeline is None:
                continue
            model = pipeline.engine.model
            state: str = "streaming" if pipeline.camera_ok else "down"
            error_code: str | None = None
            if isinstance(pipeline.source, StreamSource):
                health = pipeline.source.health_snapshot()
                state, error_code = health.state, health.error_code
            if model is None:
                state = "waiting_for_model"  # capture idles until the camera has a model to serve
            states.append(CameraState(spec=reported_spec(spec), state=state,  # type: ignore[arg-type]
                                      error_code=error_code, frames_processed=pipeline.stats.total_frames,
                                      serving_package_id=model.manifest.package_id if model else None))
        return states

    def _camera_status(self) -> CameraSetStatus:
        rejection = self.camera_rejection
        return CameraSetStatus(
            applied_revision=self.cameras_revision, cameras=self._camera_states(),
            rejected_revision=rejection[0] if rejection else None,
            error_code=rejection[1] if rejection else None, error=rejection[2][:2000] if rejection else None)

    def _republish_status_on_camera_change(self) -> None:
        """The retained status carries each camera's state: send it again when one changed."""
        states = tuple((c.spec.name, c.state, c.error_code) for c in self._camera_states())
        if states != self._camera_states_reported:
            self._camera_states_reported = states
            self.uplink.publish_status()

    def _serving_changed(self) -> None:
        self.uplink.publish_status()

    def _send_job_report(self, report: JobStatusReport) -> None:
        if report.job_id in self._bundle_reports:
            self._bundle_reports[report.job_id] = report
        # Durable: while the broker is out of reach (an air-gapped install) it waits in the outbox.
        self.uplink.publish(self.topics.job(self.config.device_id, report.job_id), report)

    def _report_job(self, command: Command, state: JobState, error: AgentError | None = None) -> None:
        target = command.pipeline if isinstance(command, DeployCommand) else None
        manager = self._manager_for(target) or next(iter(self.managers.values()), None)
        model = manager.pipeline.engine.model if manager is not None else None
        self._send_job_report(JobStatusReport(
            device_id=self.config.device_id,
            job_id=command.job_id,
            package_id=command.package_id if isinstance(command, DeployCommand) else None,
            state=state,
            error_code=error.code if error else None,
            error=str(error) if error else None,
            running_model_version=model.version if model else None,
        ))

    def _publish_telemetry(self) -> None:
        cpu_percent = self._process.cpu_percent(None)
        memory_mb = round(self._process.memory_info().rss / 2**20, 1)
        loaded_models = loaded_model_count()
        with self._cameras_lock:
            cameras = [(name, pipeline, self._model_of[name]) for name, pipeline in self.pipelines.items()]
        shadow_reported: set[str] = set()
        for name, pipeline, group in cameras:
            window = pipeline.stats.snapshot_and_reset()
            model = pipeline.engine.model
            # A shadow compares the candidate with the shared model: one camera's report carries it.
            shadow = self.shadows.take_window(group) if group not in shadow_reported else None
            shadow_reported.add(group)
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
                camera_ok=pipeline.camera_ok,
                cpu_percent=cpu_percent,
                memory_mb=memory_mb,
                dropped_reports=self.outbox.dropped(),
                rejected_commands=self.rejected_commands,
                update_check_error=self.update_check_error,
                report_seq=self.outbox.next_seq(),
                pipeline=name,
                invalid_outputs=window.invalid_outputs,
                frame_totals=pipeline.totals(),
                shadow=shadow,
                detection=DetectionWindow(**asdict(window.detection)) if window.detection else None,
                loaded_models=loaded_models,
                model_group=group,
            )
            self.uplink.publish(self.topics.telemetry(self.config.device_id), report)
            self.metrics.observe_window(report)
            manager = self.managers.get(group)
            if manager is not None and model is not None and window.frames > 0 and window.inference_errors == 0:
                manager.confirm_healthy()

    def _telemetry_loop(self) -> None:
        self._process.cpu_percent(None)  # prime: the first call always returns 0
        while not self._stop.wait(self.config.telemetry_interval_s):
            self._publish_telemetry()
            self._republish_status_on_camera_change()

    # -- commands ------------------------------------------------------------
    def _receive_command(self, payload: bytes) -> None:
        """Called on paho's thread: parse, check the director signature and addressee, hand off.

        Forged, unsigned and misaddressed commands are refused here, before anything is
        queued, so no number of them can push a genuine command out of the queue. One
        Ed25519 verification is tens of microseconds, cheap enough for this thread.
        """
        try:
            command = parse_any_command(payload)
        except ContractError as exc:
            kind = message_kind(payload)
            if kind is not None and kind not in ("deploy", "resync", "cameras"):
                # Another kind of message (say a status report): not a command, so nothing to reject.
                self.ignored_messages += 1
                log.debug("ignored a %r message on the command topic", kind)
                return
            self._count_rejected()
            log.error("rejected malformed command: %s", exc)
            return
        try:
            self._verify_signature(command)
        except SignatureError as exc:
            if self.director_keys.refresh_due():
                try:
                    self._unknown_key_commands.put_nowait(command)
                    return
                except queue.Full:
                    pass
            self._refuse_unverified(command, exc)
            return
        except AgentError as exc:
            self._refuse_unverified(command, exc)
            return
        # Expiry and sequence are checked (and rejections reported) in _handle_*, off paho's
        # thread, in the order commands were received.
        try:
            self._commands.put_nowait(command)
        except queue.Full:
            self._reject_command(command, CommandQueueFullError(
                f"{self._commands.maxsize} verified commands are waiting; job {command.job_id} dropped"))

    def _verify_signature(self, command: Command) -> None:
        """Signature by any director key we trust, and addressee.

        Raises:
            NotEnrolledError: no director key at all.
            SignatureError / UnsignedCommandError / MisaddressedCommandError: see ``verify_signature``.
        """
        keys = self.director_keys.keys
        if not keys:
            raise NotEnrolledError("no director public key configured: enroll the device first")
        refused: SignatureError | None = None
        for key in keys:
            try:
                verify_signature(command, director_key=key, device_id=self.config.device_id)
                return
            except SignatureError as exc:
                refused = exc
        assert refused is not None
        raise refused

    def _retry_with_fresh_keys(self) -> None:
        """Refresh metadata once for the commands signed by an unknown key; verify them again."""
        waiting: list[Command] = []
        while True:
            try:
                waiting.append(self._unknown_key_commands.get_nowait())
            except queue.Empty:
                break
        if not waiting:
            return
        try:
            self.director_keys.refresh()
        except AgentError as exc:
            log.warning("metadata refresh for an unknown director key failed (%s): %s", exc.code, exc)
        for command in waiting:
            try:
                self._verify_signature(command)
            except AgentError as exc:
                self._refuse_unverified(command, exc)
                continue
            log.info("director key rotated: command %s verified after a metadata refresh", command.job_id)
            self._dispatch(command)

    def _dispatch(self, command: Command) -> None:
        try:
            if isinstance(command, ResyncCommand):
                self._handle_resync(command)
            elif isinstance(command, CameraConfigCommand):
                self._handle_cameras(command)
            else:
                self._handle_deploy(command)
        except Exception:  # the command thread is the update path: it must outlive any one command
            log.exception("handling command %s failed", command.job_id)

    def _count_rejected(self) -> None:
        with self._rejected_lock:
            self.rejected_commands += 1

    def _refuse_unverified(self, command: Command, exc: AgentError) -> None:
        """Count every forgery; report a few a minute (whoever sent it may publish thousands)."""
        self._count_rejected()
        if self._forged_reports.take():
            log.error("rejected command %s (%s): %s", command.job_id, exc.code, exc)
            self._report_job(command, JobState.REJECTED, exc)

    def _command_loop(self) -> None:
        # First finish whatever install a crash interrupted (the resume table decides how).
        for manager in self.managers.values():
            manager.resume()
        for job_id in self._interrupted_bundles():
            self.bundles.finish(job_id, outcome_of(None, job_id=job_id, state="interrupted",
                                                   detail="the agent restarted during the install; see its job report"))
        interval = self.config.update_check_interval_s
        next_check = time.monotonic() + interval
        while not self._stop.is_set():
            self._retry_with_fresh_keys()
            try:
                command = self._commands.get(timeout=0.5)
            except queue.Empty:
                self._take_bundles()
                # The periodic metadata check runs here, on the one thread that uses the
                # updater, so it never refreshes under a download in progress.
                if interval and time.monotonic() >= next_check:
                    self._check_metadata()
                    next_check = time.monotonic() + interval
                continue
            self._dispatch(command)

    def _check_metadata(self) -> None:
        """Refresh TUF metadata without a command; the outcome goes out with telemetry."""
        try:
            self.updater.refresh()
        except AgentError as exc:
            if self.update_check_error != exc.code:
                log.warning("TUF metadata check failed (%s): %s", exc.code, exc)
            self.update_check_error = exc.code
            return
        except Exception:  # an unforeseen failure must not end the update path
            log.exception("TUF metadata check failed")
            self.update_check_error = "update_check_failed"
            return
        self.update_check_error = None
        self.director_keys.reload()  # a newer root may list a rotated director key

    def _check_command(self, command: DeployCommand) -> None:
        """Expiry and sequence of a command whose signature already held; then persist the sequence.

        Raises:
            UntrustedContentError: a subclass naming why the command is refused.
        """
        check_fresh(command, last_seq=self.store.last_command_seq(), now=datetime.now(UTC),
                    seq_window=self.config.command_seq_window)
        self.store.set_last_command_seq(command.seq)

    def _handle_resync(self, command: ResyncCommand) -> None:
        """Set the command seq base to what the control plane says (signature and addressee
        were checked on receipt): after its database was restored, or a stolen key pushed
        the base out of reach. A resync older than the last one accepted is a replay."""
        try:
            check_fresh(command, last_seq=self.store.last_command_seq(), now=datetime.now(UTC))
            last_resync = self.store.last_resync_issued_at()
            if last_resync is not None and command.issued_at <= last_resync:
                raise ReplayedCommandError(f"resync issued at {command.issued_at.isoformat()} is not newer than "
                                           f"the last accepted one ({last_resync.isoformat()})")
        except AgentError as exc:
            self._reject_command(command, exc)
            return
        previous = self.store.last_command_seq()
        self.store.resync_command_seq(command.seq, command.issued_at)
        log.warning("command seq base resynced from %d to %d (job %s)", previous, command.seq, command.job_id)
        self._report_job(command, JobState.SUCCEEDED)

    def _reject_command(self, command: Command, exc: AgentError) -> None:
        self._count_rejected()
        log.error("rejected command %s (%s): %s", command.job_id, exc.code, exc)
        self._report_job(command, JobState.REJECTED, exc)

    def _fetch_package(
        self, command: DeployCommand, on_state: Callable[[JobState], None] = lambda state: None
    ) -> FetchedPackage:
        """Refresh TUF metadata and download the package the (verified) command names, in memory.

        Records the outcome of the metadata check for telemetry (a frozen repository shows there).
        """
        bundle_dir = self.bundles.work_dir(command.job_id)
        if bundle_dir is not None:
            return self._fetch_from_bundle(command, bundle_dir, on_state)
        try:
            result = fetch_verified(
                command,
                updater=self.updater,
                hardware_profile=self.config.hardware_profile,
                max_package_bytes=self.config.max_package_bytes,
                on_state=on_state,
            )
        except AgentError as exc:
            self.update_check_error = exc.code
            raise
        self.update_check_error = None
        return result

    # -- air-gapped bundles --------------------------------------------------
    def _bundle_trusted_root(self) -> Path | None:
        return newest_trusted_root(self.updater.metadata_dir, self.config.tuf_root_file)

    def _fetch_from_bundle(self, command: DeployCommand, bundle_dir: Path,
                           on_state: Callable[[JobState], None]) -> FetchedPackage:
        """The same TUF download and checks as online, with the bundle as the repository."""
        cache = Path(tempfile.mkdtemp(prefix=".tuf-", dir=self.bundles.root))
        try:
            updater = bundle_updater(bundle_dir, trusted_root=self._bundle_trusted_root(), cache_dir=cache)
            return fetch_verified(command, updater=updater, hardware_profile=self.config.hardware_profile,
                                  max_package_bytes=self.config.max_package_bytes, on_state=on_state)
        finally:
            shutil.rmtree(cache, ignore_errors=True)

    def _interrupted_bundles(self) -> list[str]:
        """Bundle jobs left in work/ by a restart, once their install (resumed above) is over."""
        if not self.bundles.work.is_dir():
            return []
        running = set()
        for manager in self.managers.values():
            install = manager.store.read().install
            if install is not None:
                running.add(str(install.command.get("job_id")))
        return [entry.name for entry in self.bundles.work.iterdir() if entry.is_dir() and entry.name not in running]

    def _take_bundles(self) -> None:
        for job_id in self.bundles.pending():
            if self._stop.is_set():
                return
            try:
                self._install_bundle(job_id)
            except Exception:  # the command thread is the update path: it must outlive any one bundle
                log.exception("installing bundle job %s failed", job_id)
                self.bundles.finish(job_id, outcome_of(None, job_id=job_id, state="failed",
                                                       error_code="internal_error"))

    def _install_bundle(self, job_id: str) -> None:
        """Verify a handed-over bundle again, in this process (the copy in the inbox is what counts),
        then take its command as if it had come over MQTT: seq persisted, install, reports queued."""
        bundle_dir = self.bundles.take(job_id)
        log.info("installing bundle job %s from %s", job_id, bundle_dir)
        cache = Path(tempfile.mkdtemp(prefix=".tuf-", dir=self.bundles.root))
        try:
            verified = verify_bundle(
                bundle_dir, device_id=self.config.device_id, trusted_root=self._bundle_trusted_root(),
                director_key_file=self.config.director_key_file, cache_dir=cache,
                last_seq=self.store.last_command_seq(), now=datetime.now(UTC), seq_window=self.config.command_seq_window)
            if verified.command.job_id != job_id:  # install-bundle names the copy after its command's job
                raise BundleFormatError(f"bundle in {bundle_dir} carries job {verified.command.job_id}, not {job_id}")
        except AgentError as exc:
            self._count_rejected()
            log.error("refused bundle job %s (%s): %s", job_id, exc.code, exc)
            model = self.engine.model
            self._send_job_report(JobStatusReport(
                device_id=self.config.device_id, job_id=job_id, state=JobState.REJECTED, error_code=exc.code,
                error=str(exc)[:2000], running_model_version=model.version if model else None))
            self.bundles.finish(job_id, outcome_of(exc, job_id=job_id, state=JobState.REJECTED.value))
            return
        finally:
            shutil.rmtree(cache, ignore_errors=True)
        command = verified.command
        self._bundle_reports[job_id] = None
        try:
            self._handle_deploy(command)
        finally:
            report = self._bundle_reports.pop(job_id, None)
            if report is None:  # _handle_deploy sends a final report on every path; say so if one did not
                report_fields: dict[str, object] = {"state": "unknown"}
            else:
                report_fields = {"state": report.state.value, "error_code": report.error_code, "error": report.error,
                                 "running_model_version": report.running_model_version}
            self.bundles.finish(job_id, outcome_of(None, job_id=job_id, package_id=command.package_id,
                                                   bundle_id=verified.info.bundle_id, **report_fields))

    def _handle_deploy(self, command: DeployCommand) -> None:
        manager = self._manager_for(command.pipeline)
        if manager is None:
            self._reject_command(command, AgentError(f"this device has no model or camera named {command.pipeline!r}"))
            return
        if manager.is_running_job(command.job_id):
            # A copy (MQTT redelivery) of the job whose install is under way: not a refusal,
            # the install record carries the job to the end and reports it.
            log.info("ignoring a redelivered copy of job %s, which is being installed", command.job_id)
            return
        if manager.is_known_job(command.job_id):
            # A job this device already finished: refused and reported. The control plane
            # keeps a job's first final state, so a genuine late redelivery changes nothing there.
            self._reject_command(command, ReplayedCommandError(f"job {command.job_id} was already handled"))
            return
        # Check freshness before anything else, including the "already running" shortcut:
        # a stale or replayed command must not even earn a success report.
        try:
            self._check_command(command)
        except AgentError as exc:
            self._reject_command(command, exc)
            return
        if command.mode == "shadow":
            self._start_shadow(manager, command)
            return
        self.shadows.stop(manager.pipeline.name)  # an install ends any shadow phase
        current = manager.pipeline.engine.model
        if current is not None and current.manifest.package_id == command.package_id:
            self._report_job(command, JobState.SUCCEEDED)
            return
        self._report_job(command, JobState.RECEIVED)
        manager.install(command)

    def _start_shadow(self, manager: InstallManager, command: DeployCommand) -> None:
        """Fetch and verify the candidate, then run it beside the active model.

        Nothing is swapped: the candidate only sees a sampled fraction of frames, and the
        agreement and latency go out with each telemetry report.
        """
        self._report_job(command, JobState.RECEIVED)
        try:
            fetched = self._fetch_package(command, lambda state: self._report_job(command, state))
            check_digests(fetched)
            package_dir = manager.store.commit(fetched.manifest, fetched.manifest_bytes, fetched.files)
            candidate = load_model(fetched.manifest, package_dir, threads=self.config.inference_threads)
        except AgentError as exc:  # a runtime that refuses the candidate included
            self._report_job(command, JobState.FAILED, exc)
            return
        self.shadows.start(manager.pipeline.name, ShadowRunner(
            candidate, sample_fraction=command.shadow_sample_fraction, duration_s=command.shadow_duration_s))
        self._report_job(command, JobState.SUCCEEDED)
        log.info("shadowing %s on %.0f%% of frames for %.0fs", command.package_id,
                 command.shadow_sample_fraction * 100, command.shadow_duration_s)

    # -- cameras managed from the control plane ---------------------------------
    def _handle_cameras(self, command: CameraConfigCommand) -> None:
        """A signed camera set (signature and addressee checked on receipt): freshness, then the
        set's own checks, then :meth:`apply_cameras`. A set that cannot run is refused whole and
        the reason goes out in the status; the cameras already running are left alone."""
        try:
            check_fresh(command, last_seq=self.store.last_command_seq(), now=datetime.now(UTC),
                        seq_window=self.config.command_seq_window)
        except AgentError as exc:
            self._reject_command(command, exc)
            return
        self.store.set_last_command_seq(command.seq)
        problems = device_problems(command.cameras, known_packages=held_packages(device_stores(self.config.state_dir)))
        if not problems:
            problems = shared_model_problems(self._camera_configs(command.cameras))
        if problems:
            self._refuse_cameras(command, "bad_camera_config", "; ".join(problems))
            return
        try:
            plan = self.apply_cameras(command.cameras, command.revision)
        except Exception as exc:  # a disk that refuses the saved set, a source that cannot be opened
            log.exception("applying camera set revision %d failed", command.revision)
            self._refuse_cameras(command, "camera_apply_failed", f"{type(exc).__name__}: {exc}")
            return
        self.camera_rejection = None
        log.info("camera set revision %d applied (job %s): started %s, stopped %s, restarted %s, kept %s",
                 command.revision, command.job_id, plan.start, plan.stop, plan.restart, plan.keep)
        self.uplink.publish_status()

    def _refuse_cameras(self, command: CameraConfigCommand, code: str, reason: str) -> None:
        self._count_rejected()
        self.camera_rejection = (command.revision, code, reason)
        log.error("refused camera set revision %d (job %s, %s): %s; the running cameras are unchanged",
                  command.revision, command.job_id, code, reason)
        self.uplink.publish_status()

    def _camera_configs(self, specs: list[CameraSpec]) -> list[PipelineConfig]:
        """The pipeline configs that run ``specs`` (each over the config file's camera of its name)."""
        return [pipeline_config_for(spec, config=self.config, base=self._file_pipelines.get(spec.name))
                for spec in specs]

    def apply_cameras(self, specs: list[CameraSpec], revision: int) -> CameraPlan:
        """Run exactly ``specs`` from now on: start the new cameras, stop the removed ones and
        restart (remove, then add) only those whose spec changed; the others keep their pipeline
        untouched. Cameras come and go through :meth:`add_camera` / :meth:`remove_camera`, so each
        joins (or leaves) its model's shared instance.

        The set is saved before any pipeline changes, so a crash midway restarts into it.

        Raises:
            OSError: the set could not be saved (nothing was changed).
            CameraApplyError: cameras whose source could not be opened (the others were applied).
        """
        plan = plan_cameras(list(self.camera_specs.values()), specs)
        configs = {c.name: c for c in self._camera_configs(specs)}
        self.camera_file.save(AppliedCameraSet(revision=revision, cameras=list(specs)))
        for name in [*plan.stop, *plan.restart]:
            self.remove_camera(name)
        failed: dict[str, str] = {}
        for spec in specs:
            if spec.name in plan.start or spec.name in plan.restart:
                try:
                    self.add_camera(configs[spec.name])
                except ValueError as exc:
                    failed[spec.name] = str(exc)
        self.camera_specs = {spec.name: spec for spec in specs if spec.name not in failed}
        self.cameras_revision = revision
        if failed:
            raise CameraApplyError("; ".join(f"camera {name!r}: {reason}" for name, reason in failed.items()))
        return plan

    def _serve_assigned_package(self, manager: InstallManager, package_id: str) -> None:
        """A model assigned a package serves it: copied from whichever store on the device holds
        it into the model's own store (re-verified, so it survives restarts), unless already active."""
        active = manager.store.active()
        if active is not None and active.package_id == package_id:
            return
        found = find_package([store for store in device_stores(self.config.state_dir)
                              if store.root != manager.store.root], package_id)
        if found is None:
            log.error("[%s] assigned package %s is not on this device; waiting for a deployment",
                      manager.pipeline.name, package_id)
            return
        try:
            adopt_package(manager.store, *found)
        except (AgentError, OSError) as exc:
            log.error("[%s] cannot serve assigned package %s: %s", manager.pipeline.name, package_id, exc)
