"""The fleet simulator speaks the protocol faithfully (real broker, contract parsers on the other side)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.contract import DeployCommand, DeviceState, JobState, ReportKind, Topics, parse_report
from agent.contract.broker_url import parse_broker_url
from tests.support.services import wait_for
from tools.fleet_sim import DeployPlan, FleetSimulator

pytestmark = pytest.mark.integration


class Observer:
    """A plain paho client standing in for the control plane: records every parsed report."""

    def __init__(self, url: str, topics: Topics) -> None:
        self.topics = topics
        self.reports: list[object] = []
        self.retained: dict[str, object] = {}
        self._lock = threading.Lock()
        address = parse_broker_url(url)
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2)
        self.client.on_message = self._on_message
        self.client.connect(address.host, address.port)
        self.client.subscribe([(t, 1) for t in topics.all_reports()])
        self.client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        device_id, kind = self.topics.parse_report(message.topic)
        report = parse_report(kind, message.payload, device_id)  # raises if the simulator breaks the contract
        with self._lock:
            self.reports.append(report)
            if kind is ReportKind.STATUS:
                self.retained[device_id] = report

    def of(self, kind: str, device_id: str | None = None) -> list:
        with self._lock:
            return [r for r in self.reports if r.kind == kind and (device_id is None or r.device_id == device_id)]

    def command(self, command: DeployCommand) -> None:
        self.client.publish(self.topics.commands(command.device_id), command.to_bytes(), qos=1)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _command(device_id: str, job_id: str, seq: int, *, package_id: str = "pkg-2", expired: bool = False) -> DeployCommand:
    return DeployCommand(
        device_id=device_id, job_id=job_id, package_id=package_id, model_version="shapes-2",
        manifest_url="http://127.0.0.1:9/api/v1/packages/pkg-2/files/manifest.json", manifest_sha256="0" * 64,
        seq=seq, expires_at=datetime.now(UTC) + timedelta(seconds=-5 if expired else 600),
    )


def test_simulated_devices_report_status_telemetry_jobs_and_last_will(mqtt_url: str, topic_prefix: str) -> None:
    topics = Topics(topic_prefix)
    observer = Observer(mqtt_url, topics)
    ids = [f"sim-{i:03d}" for i in range(20)]
    sim = FleetSimulator(mqtt_url, ids, topic_prefix=topic_prefix, telemetry_interval_s=0.5,
                         initial_model_version="shapes-1", initial_package_id="pkg-1")
    sim.set_device_hook("sim-001", lambda device, command: DeployPlan.fail("downloading", "download_failed"))
    sim.set_device_hook("sim-002", lambda device, command: DeployPlan.ignore())
    try:
        sim.start()
        wait_for(lambda: len(observer.retained) == 20, 20, what="a retained online status per device")
        assert all(s.state is DeviceState.ONLINE for s in observer.retained.values())
        wait_for(lambda: len({r.device_id for r in observer.of("telemetry")}) == 20, 20, what="telemetry from all")
        first = observer.of("telemetry", "sim-005")[0]
        assert first.model_version == "shapes-1" and first.frames > 0 and 0 <= first.mean_confidence <= 1

        observer.command(_command("sim-000", "job-a", 1))
        observer.command(_command("sim-001", "job-b", 1))
        observer.command(_command("sim-002", "job-c", 1))
        observer.command(_command("sim-003", "job-d", 1, expired=True))
        observer.command(_command("sim-004", "job-e", 5))
        wait_for(lambda: sim.device("sim-000").running_model_version == "shapes-2", 20, what="sim-000 installed")
        wait_for(lambda: [r.state for r in observer.of("job", "sim-000")][-1] is JobState.SUCCEEDED, 20,
                 what="sim-000 job succeeded")
        assert [r.state for r in observer.of("job", "sim-000")] == [
            JobState.RECEIVED, JobState.DOWNLOADING, JobState.VERIFYING, JobState.INSTALLING, JobState.SUCCEEDED]
        wait_for(lambda: observer.retained["sim-000"].running_model_version == "shapes-2", 20,
                 what="retained status names the new model")
        wait_for(lambda: observer.of("job", "sim-001") and observer.of("job", "sim-001")[-1].state is JobState.FAILED,
                 20, what="sim-001 failure")
        assert observer.of("job", "sim-001")[-1].error_code == "download_failed"
        wait_for(lambda: observer.of("job", "sim-003"), 20, what="sim-003 rejection")
        assert observer.of("job", "sim-003")[-1].state is JobState.REJECTED
        # A replayed (older) sequence number is refused like the agent refuses it.
        wait_for(lambda: sim.device("sim-004").running_model_version == "shapes-2", 20, what="sim-004 installed")
        observer.command(_command("sim-004", "job-f", 3, package_id="pkg-3"))
        wait_for(lambda: any(r.job_id == "job-f" for r in observer.of("job", "sim-004")), 20, what="replay rejection")
        assert [r for r in observer.of("job", "sim-004") if r.job_id == "job-f"][-1].error_code == "rollback"
        assert [r.state for r in observer.of("job", "sim-002")] == [JobState.RECEIVED]  # ignored: stuck

        # A cut link fires the retained Last Will; buffered reports arrive after reconnecting.
        sim.go_offline("sim-010", mode="network")
        wait_for(lambda: observer.retained["sim-010"].state is DeviceState.OFFLINE, 20, what="Last Will")
        before = sim.device("sim-010").telemetry_generated
        wait_for(lambda: sim.device("sim-010").telemetry_generated >= before + 2, 20, what="buffering offline")
        sim.go_online("sim-010")
        wait_for(lambda: observer.retained["sim-010"].state is DeviceState.ONLINE, 20, what="back online")
        sim.stop_telemetry()
        sim.wait_drained(30)
        generated = set(sim.telemetry_message_ids())
        wait_for(lambda: {r.message_id for r in observer.of("telemetry")} >= generated, 20,
                 what="every generated report delivered")
    finally:
        sim.stop(purge_sessions=True)  # leave no persistent sessions on a shared broker
        observer.close()
