"""Issue 9: several ingest nodes share device traffic through one MQTT shared subscription."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from tests.scale.support import IngestNodeProcess, prepare_database, stored_telemetry
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
        wait_for(lambda: stored_telemetry(database_url, device_ids)[0] >= len(generated), 60,
                 what="every report stored")
        rows, ids = stored_telemetry(database_url, device_ids)
        assert ids == set(generated) and rows == len(generated)

        def shares() -> list[int]:  # the status files are rewritten every half second
            return [int(node.status().get("accepted", {}).get("telemetry", 0)) for node in nodes]  # type: ignore[union-attr]

        # Between them the nodes stored each report once, and both did real work.
        wait_for(lambda: sum(shares()) == len(generated), 10, what="node counters to catch up")
        assert all(share > len(generated) / 10 for share in shares()), shares()
    finally:
        sim.stop(graceful=False, purge_sessions=True)
        for node in nodes:
            node.stop(purge_session=True)
