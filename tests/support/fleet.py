"""Real agent processes for integration tests, and packaging helpers."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from sqlmodel import Session

from agent.security.enroll import enroll
from cloud.demo import spawn_agent, stop_processes
from cloud.pipeline.quickstart import PipelineResult, register_and_package
from cloud.server import ControlPlane
from tests.support.models import TrainedModel

TEST_PROFILE = "x86-64-avx2"


@dataclass
class AgentProcess:
    device_id: str
    state_dir: Path
    process: subprocess.Popen[bytes]

    @property
    def log(self) -> str:
        path = self.state_dir / "agent.log"
        return path.read_text(errors="replace") if path.exists() else ""


def publish_model(plane: ControlPlane, model: TrainedModel, *, name: str = "shapes",
                  profiles: list[str] | None = None) -> PipelineResult:
    return register_and_package(
        plane.engine, onnx_path=model.onnx_path, labels=model.labels, model_name=name,
        dataset_id=model.dataset_id, packages_dir=plane.settings.packages_dir,
        hardware_profiles=profiles or [TEST_PROFILE], metrics={"accuracy": model.accuracy},
    )


def enroll_agent(plane: ControlPlane, state_dir: Path, device_id: str, *, profile: str = TEST_PROFILE,
                 allow_http: bool = False) -> dict[str, object]:
    """Enroll ``device_id`` the way a real device does (one-time token, key made here, CSR over HTTP).

    Returns the agent config settings enrollment produced: certificate and key paths,
    the TUF root and director public key it must trust.
    """
    with Session(plane.engine) as session:
        token, _ = plane.security.create_enrollment_token(session, device_id, hardware_profile=profile)
    return enroll(plane.base_url, token, state_dir, allow_http=allow_http)


def start_agent(plane: ControlPlane, workdir: Path, device_id: str, *, source: str = "synthetic:1",
                fps: float = 10.0, profile: str = TEST_PROFILE, extra: dict[str, object] | None = None) -> AgentProcess:
    state_dir = workdir / "devices" / device_id
    state_dir.mkdir(parents=True, exist_ok=True)
    config: dict[str, object] = {
        **enroll_agent(plane, state_dir, device_id, profile=profile),
        "device_id": device_id, "mqtt_url": plane.broker_url, "topic_prefix": plane.settings.topic_prefix,
        "api_url": plane.base_url, "state_dir": str(state_dir), "hardware_profile": profile,
        "source": source, "target_fps": fps, "telemetry_interval_s": 1.0, "inference_threads": 1,
        # These agents share two cores with a parallel test worker: a p95 latency ratio against a
        # baseline of a millisecond or two says nothing there. Probation's latency verdict is
        # tested where it is the subject (tests/agent/test_probation.py, the state machine).
        "probation_max_p95_latency_ratio": 20.0,
        **(extra or {}),
    }
    process = spawn_agent(config, state_dir / "agent.yaml", state_dir / "agent.log")
    return AgentProcess(device_id, state_dir, process)


def stop_agents(agents: list[AgentProcess]) -> None:
    stop_processes([a.process for a in agents])
