"""A control-plane simulator for agent tests: a real TUF repository and director key,
an HTTP server for it, and an MQTT observer that records every report.

It replaces the full control plane (database, API) where a test is about the
agent alone, so fault tests stay fast; the broker and the agent processes are real.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import yaml

from agent.contract import (
    MANIFEST_FILE,
    DeployCommand,
    JobStatusReport,
    ModelArtifact,
    PackageManifest,
    StatusReport,
    TelemetryReport,
    describe_file,
    sha256_bytes,
    utc_now,
)
from agent.contract.broker_url import parse_broker_url
from cloud.security.director import DirectorKey
from cloud.security.tuf_repo import TufRepository
from tests.agent.onnx_models import LABELS, SPEC, golden_for
from tests.support.services import wait_for

PROFILE = "x86-64-avx2"


@dataclass(frozen=True)
class Release:
    package_id: str
    model_version: str
    manifest_sha256: str


class _RepoHandler(SimpleHTTPRequestHandler):
    corrupt: set[str] = set()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        path = Path(self.translate_path(self.path))
        if path.is_file() and any(marker in path.name for marker in self.corrupt):
            data = bytearray(path.read_bytes())
            data[len(data) // 2] ^= 0xFF  # one flipped byte: same length, wrong hash
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(bytes(data))
            return
        super().do_GET()


@dataclass
class Observed:
    status: dict[str, list[StatusReport]] = field(default_factory=dict)
    telemetry: dict[str, list[TelemetryReport]] = field(default_factory=dict)
    jobs: dict[str, list[JobStatusReport]] = field(default_factory=dict)


class CloudSim:
    def __init__(self, workdir: Path, mqtt_url: str, prefix: str) -> None:
        self.workdir = workdir
        self.mqtt_url = mqtt_url
        self.prefix = prefix
        self.repo = TufRepository(workdir / "tuf")
        self.repo.initialise()
        self.director = DirectorKey(workdir / "keys" / "director.pem")
        self.director.initialise()
        self.root_file = workdir / "trusted-root.json"
        self.root_file.write_bytes(self.repo.trusted_root_bytes())
        self.director_pub = workdir / "director.pub.pem"
        self.director_pub.write_bytes(self.director.public_pem())
        self._seq: dict[str, int] = {}
        self.observed = Observed()
        self._lock = threading.Lock()
        handler = type("Handler", (_RepoHandler,), {"corrupt": set()})
        self._handler = handler
        self.http = ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: handler(*a, directory=str(self.repo.directory)))
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        self.base_url = f"http://127.0.0.1:{self.http.server_address[1]}"
        self._client = self._observer(mqtt_url)

    # -- broker side ---------------------------------------------------------
    def _observer(self, url: str) -> mqtt.Client:
        address = parse_broker_url(url)
        # A persistent session, so reports published while this observer reconnects are kept for it.
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"sim-{uuid.uuid4().hex[:8]}",
                             clean_session=False)
        connected = threading.Event()

        def on_connect(c: mqtt.Client, u: object, f: object, rc: Any, p: object) -> None:
            c.subscribe(f"{self.prefix}/#", qos=1)
            connected.set()

        client.on_connect = on_connect
        client.on_message = self._on_message
        client.reconnect_delay_set(min_delay=0.1, max_delay=0.5)
        client.connect(address.host, address.port)
        client.loop_start()
        assert connected.wait(10), "observer could not connect"
        return client

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        parts = message.topic[len(self.prefix) + 1 :].split("/")
        if len(parts) < 2 or not message.payload:
            return
        device_id, kind = parts[0], parts[1]
        with self._lock:
            if kind == "status":
                self.observed.status.setdefault(device_id, []).append(StatusReport.model_validate_json(message.payload))
            elif kind == "telemetry":
                self.observed.telemetry.setdefault(device_id, []).append(
                    TelemetryReport.model_validate_json(message.payload))
            elif kind == "jobs":
                report = JobStatusReport.model_validate_json(message.payload)
                self.observed.jobs.setdefault(report.job_id, []).append(report)

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()
        self.http.shutdown()

    # -- packages ------------------------------------------------------------
    def release(self, version: str, models: list[tuple[Path, ModelArtifact]], *, golden: bool = True,
                bad_golden_for: set[str] = frozenset(), name: str = "shapes") -> Release:
        """Build, add to TUF and return a package with one artifact per (model, artifact)."""
        directory = self.workdir / "build" / f"{version}-{uuid.uuid4().hex[:6]}"
        directory.mkdir(parents=True)
        artifacts: list[ModelArtifact] = []
        files = []
        for source, artifact in models:
            if not (directory / artifact.file).exists():
                (directory / artifact.file).write_bytes(source.read_bytes())
                files.append(describe_file(directory / artifact.file))
            if golden:
                golden_name = f"golden-{artifact.runtime}-{artifact.file}.npz"
                golden_for(source, directory / golden_name,
                           perturb=1.0 if artifact.runtime in bad_golden_for else 0.0)
                files.append(describe_file(directory / golden_name))
                artifact = artifact.model_copy(update={"golden_file": golden_name})
            artifacts.append(artifact)
        manifest = PackageManifest(
            package_id=f"{version}-{uuid.uuid4().hex[:8]}", model_name=name, model_version=version,
            created_at=utc_now(), hardware_profiles=[PROFILE], labels=LABELS, preprocessing=SPEC,
            artifacts=artifacts, files=files,
        )
        raw = manifest.to_bytes()
        (directory / MANIFEST_FILE).write_bytes(raw)
        self.repo.add_package(directory)
        return Release(manifest.package_id, version, sha256_bytes(raw))

    def corrupt_downloads(self, marker: str) -> None:
        """Serve every repository file whose name contains ``marker`` with one byte flipped."""
        self._handler.corrupt.add(marker)

    # -- commands ------------------------------------------------------------
    def deploy(self, device_id: str, release: Release, *, pipeline: str | None = None) -> str:
        job_id = f"job-{uuid.uuid4().hex[:10]}"
        self._seq[device_id] = self._seq.get(device_id, 0) + 1
        command = self.director.sign(DeployCommand(
            device_id=device_id, job_id=job_id, package_id=release.package_id, model_version=release.model_version,
            manifest_url=f"{self.base_url}/unused", manifest_sha256=release.manifest_sha256,
            seq=self._seq[device_id], expires_at=datetime.now(UTC) + timedelta(hours=1), pipeline=pipeline,
        ))
        self._client.publish(f"{self.prefix}/{device_id}/commands", command.to_bytes(), qos=1).wait_for_publish(5)
        return job_id

    # -- observations --------------------------------------------------------
    def job_reports(self, job_id: str) -> list[JobStatusReport]:
        with self._lock:
            return list(self.observed.jobs.get(job_id, []))

    def final_job(self, job_id: str) -> JobStatusReport | None:
        return next((r for r in self.job_reports(job_id) if r.state.is_final), None)

    def wait_final(self, job_id: str, timeout_s: float = 60) -> JobStatusReport:
        report: JobStatusReport = wait_for(lambda: self.final_job(job_id), timeout_s, what=f"final report of {job_id}")
        return report

    def latest_status(self, device_id: str) -> StatusReport | None:
        with self._lock:
            online = [s for s in self.observed.status.get(device_id, []) if s.state == "online"]
        return online[-1] if online else None

    def wait_online(self, device_id: str, timeout_s: float = 30) -> StatusReport:
        """Until the agent announced itself (it is subscribed to its commands from then on)."""
        status: StatusReport = wait_for(lambda: self.latest_status(device_id), timeout_s, what=f"{device_id} online")
        return status

    def telemetry(self, device_id: str) -> list[TelemetryReport]:
        with self._lock:
            return list(self.observed.telemetry.get(device_id, []))

    def wait_serving(self, device_id: str, version: str, *, pipeline: str | None = None,
                     timeout_s: float = 60) -> None:
        """Until telemetry shows frames served by ``version`` (after the latest status says so)."""
        def serving() -> bool:
            return any(t.model_version == version and t.frames > 0 and (pipeline is None or t.pipeline == pipeline)
                       for t in self.telemetry(device_id)[-4:])
        wait_for(serving, timeout_s, what=f"{device_id} serving {version}")

    def agent_config(self, device_id: str, state_dir: Path, **overrides: Any) -> dict[str, Any]:
        config: dict[str, Any] = {
            "device_id": device_id, "mqtt_url": self.mqtt_url, "topic_prefix": self.prefix,
            "api_url": self.base_url, "state_dir": str(state_dir), "hardware_profile": PROFILE,
            "source": "synthetic:1", "target_fps": 0.0, "source_fps": 40.0, "telemetry_interval_s": 0.5,
            "inference_threads": 1, "tuf_root_file": str(self.root_file),
            "director_key_file": str(self.director_pub),
            "tuf_metadata_url": f"{self.base_url}/metadata/", "tuf_targets_url": f"{self.base_url}/targets/",
            "probation_window_s": 1.0, "probation_min_frames": 5,
            # Latency is judged only where a test is about it: p95 on a busy shared CPU is noisy.
            "probation_max_p95_latency_ratio": 1000.0,
            "runtime_timing_runs": 3, "reconnect_min_s": 0.2, "reconnect_max_s": 1.0,
        }
        config.update(overrides)
        return config


class AgentProcess:
    """A real ``python -m agent run`` process; its log is ``state_dir/agent.log``."""

    def __init__(self, config: dict[str, Any], *, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.state_dir = Path(str(config["state_dir"]))
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.state_dir / "agent.yaml"
        self.extra_env = env or {}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *, env: dict[str, str] | None = None) -> AgentProcess:
        self.config_path.write_text(yaml.safe_dump(self.config))
        extra = self.extra_env if env is None else env
        with (self.state_dir / "agent.log").open("ab") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "agent", "run", "--config", str(self.config_path)],
                stdout=log_file, stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **extra},
            )
        return self

    @property
    def log(self) -> str:
        path = self.state_dir / "agent.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def exited(self) -> int | None:
        assert self.process is not None
        return self.process.poll()

    def kill(self) -> None:
        """kill -9: no cleanup, no flush, no offline status."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self, timeout_s: float = 20) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        return self.process.returncode

    def install_record(self, pipeline: str = "main") -> dict[str, Any] | None:
        path = self.state_dir / "pipelines" / pipeline / "update.json"
        if not path.exists():
            return None
        document: dict[str, Any] = json.loads(path.read_text())
        return document


def wait_until(predicate: Callable[[], object], timeout_s: float, what: str) -> Any:
    return wait_for(predicate, timeout_s, what=what)
