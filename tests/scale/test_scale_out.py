"""Several ingest nodes share device traffic through one MQTT shared subscription."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from tests.scale.support import IngestNodeProcess, assert_every_report_stored_once, prepare_database
from tests.support.services import wait_for
from tools.fleet_sim import FleetSimulator

pytestmark = pytest.mark.integration


def test_two_nodes_split_the_fleet_and_store_every_report_once(tmp_path: Path, mqtt_url: str, database_url: str,
                                                               topic_prefix: str) -> None:
    device_ids = [f"so-{i:03d}" for i in range(200)]
    prepare_database(database_url, device_ids)
    group = f"g{uuid.uuid4().hex[:8]}"
    nodes = [IngestNodeProcess(database_url=database_url, mqtt_url=mqtt_url, topic_prefix=topic_prefix,
                               client_id=f"{group}-{n}", group=group, workdir=tmp_path).start() for n in (1, 2)]
    sim = FleetSimulator(mqtt_url, device_ids, topic_prefix=topic_prefix, telemetry_interval_s=0.5)
    try:
        sim.start()
        time.sleep(4.0)
        sim.stop_telemetry()
        sim.wait_drained(60)
        generated = sim.telemetry_message_ids()
        assert_every_report_stored_once(database_url, device_ids, generated, timeout_s=60)

        def shares() -> list[int]:  # the status files are rewritten every half second
            return [int(node.status().get("accepted", {}).get("telemetry", 0)) for node in nodes]

        # Between them the nodes stored each report once, and both did real work.
        wait_for(lambda: sum(shares()) == len(generated), 10, what="node counters to catch up")
        assert all(share > len(generated) / 10 for share in shares()), shares()
    finally:
        sim.stop(graceful=False, purge_sessions=True)
        for node in nodes:
            node.stop(purge_session=True)


def test_job_reports_split_across_nodes_end_in_the_final_state(tmp_path: Path, mqtt_url: str, database_url: str,
                                                               topic_prefix: str) -> None:
    """A device's five job reports reach two nodes round-robin, in concurrent batches; the job
    must still end "succeeded" (final states are sticky only under a row lock)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from sqlmodel import Session, select

    from agent.contract import Topics
    from agent.contract.broker_url import parse_broker_url
    from cloud.core.db import make_engine
    from cloud.fleet import crud
    from cloud.fleet.tables import DeviceJob, ModelVersion, Package
    from tools.fleet_sim import DeployPlan

    device_ids = [f"jr-{i:03d}" for i in range(200)]
    prepare_database(database_url, device_ids)
    engine = make_engine(database_url)
    with Session(engine) as session:
        model = ModelVersion(name="m", version="m-2", dataset_id="d", onnx_path="/dev/null", onnx_sha256="0" * 64)
        session.add(model)
        session.flush()
        package = Package(id="pkg-m-2", model_version_id=model.id or 0, model_version="m-2",
                          hardware_profiles=["x86-64-avx2"], manifest_sha256="0" * 64, size_bytes=0, path="/x")
        session.add(package)
        session.commit()
        deployment, commands = crud.create_deployment(session, package, device_ids,
                                                      base_url="http://127.0.0.1:9",
                                                      command_ttl_s=600)
        deployment_id = deployment.id
    group = f"g{uuid.uuid4().hex[:8]}"
    nodes = [IngestNodeProcess(database_url=database_url, mqtt_url=mqtt_url, topic_prefix=topic_prefix,
                               client_id=f"{group}-{n}", group=group, workdir=tmp_path).start() for n in (1, 2)]
    sim = FleetSimulator(mqtt_url, device_ids, topic_prefix=topic_prefix, telemetry_interval_s=30.0,
                         deploy_hook=lambda device, command: DeployPlan.succeed(step_delay_s=0.0))
    address = parse_broker_url(mqtt_url)
    publisher = mqtt.Client(CallbackAPIVersion.VERSION2)
    topics = Topics(topic_prefix)
    try:
        sim.start()
        publisher.connect(address.host, address.port)
        publisher.loop_start()
        for command in commands:
            publisher.publish(topics.commands(command.device_id), command.to_bytes(), qos=1).wait_for_publish(10)
        wait_for(lambda: sim.stats().job_reports.get("succeeded", 0) == len(device_ids), 60,
                 what="every device to report success")
        sim.wait_drained(60)

        def states() -> dict[str, int]:
            with Session(engine) as session:
                found: dict[str, int] = {}
                for state in session.exec(select(DeviceJob.state).where(DeviceJob.deployment_id == deployment_id)):
                    found[state] = found.get(state, 0) + 1
                return found

        wait_for(lambda: int(sum(int(n.status().get("accepted", {}).get("job", 0)) for n in nodes))
                 >= 5 * len(device_ids), 60, what="every job report stored")
        assert states() == {"succeeded": len(device_ids)}, states()
        assert all(int(n.status().get("accepted", {}).get("job", 0)) > 0 for n in nodes)
        with Session(engine) as session:
            assert crud.get_deployment(session, deployment_id)[0].state == "succeeded"
    finally:
        publisher.loop_stop()
        publisher.disconnect()
        sim.stop(graceful=False, purge_sessions=True)
        for node in nodes:
            node.stop(purge_session=True)
        engine.dispose()
