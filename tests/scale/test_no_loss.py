"""No report lost, none duplicated, when the broker, an ingest node or the database restarts.

200 simulated devices stream telemetry at QoS 1 (persistent sessions, buffering while
the broker is away) to a private, persistent Mosquitto; an ingest node process with a
stable client id stores them with acknowledgements sent only after each commit. Mid-
stream one component is restarted. Afterwards every telemetry message id the devices
generated must be in the database exactly once. Table-driven: one row per fault.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.scale.support import (
    DurableMosquitto,
    IngestNodeProcess,
    PrivatePostgres,
    assert_every_report_stored_once,
    mosquitto_available,
    prepare_database,
    require,
)
from tools.fleet_sim import FleetSimulator

pytestmark = pytest.mark.integration

DEVICES = 200
INTERVAL_S = 0.5  # 400 reports a second from the fleet


@dataclass
class Rig:
    broker: DurableMosquitto
    database_url: str
    postgres: PrivatePostgres | None
    node: IngestNodeProcess
    sim: FleetSimulator
    device_ids: list[str]


def _fault_broker(rig: Rig) -> None:
    rig.broker.restart(down_s=2.0)  # SIGTERM: Mosquitto saves sessions and queues, then comes back


def _fault_control_plane(rig: Rig) -> None:
    rig.node.kill()  # SIGKILL mid-batch: stored-but-unacknowledged reports will come back
    time.sleep(3.0)  # devices keep reporting; the broker queues for the node's session
    rig.node.start()


def _fault_database(rig: Rig) -> None:
    assert rig.postgres is not None
    rig.postgres.restart(down_s=3.0)  # immediate (crash) stop: open transactions are cut


@dataclass(frozen=True)
class Fault:
    name: str
    inject: Callable[[Rig], None]
    private_database: bool
    # What proves the fault really hit the stream (read after the run).
    evidence: Callable[[Rig], bool]


FAULTS = [
    Fault("broker_restart", _fault_broker, False,
          lambda rig: rig.sim.stats().connects >= 2 * DEVICES),
    Fault("control_plane_kill", _fault_control_plane, False,
          lambda rig: rig.node.killed == [-9] and int(rig.node.status().get("received", 0)) > 0),
    Fault("database_restart", _fault_database, True,
          lambda rig: int(rig.node.status().get("storage_errors", 0)) > 0),
]


@pytest.fixture
def rig_factory(tmp_path: Path, database_url: str, topic_prefix: str) -> Iterator[Callable[[bool], Rig]]:
    created: list[Rig] = []
    cleanups: list[Callable[[], None]] = []

    def make(private_database: bool) -> Rig:
        require(mosquitto_available(), "the mosquitto binary")
        broker = DurableMosquitto().start()
        cleanups.append(broker.stop)
        postgres = None
        url = database_url
        if private_database:
            require(PrivatePostgres.available(), "PostgreSQL server binaries (initdb, pg_ctl)")
            postgres = PrivatePostgres().start()
            cleanups.append(postgres.stop)
            url = postgres.url
        device_ids = [f"nl-{i:03d}" for i in range(DEVICES)]
        prepare_database(url, device_ids)
        node = IngestNodeProcess(database_url=url, mqtt_url=broker.url, topic_prefix=topic_prefix,
                                 client_id=f"ingest-{uuid.uuid4().hex[:6]}", workdir=tmp_path).start()
        cleanups.append(node.stop)
        sim = FleetSimulator(broker.url, device_ids, topic_prefix=topic_prefix, telemetry_interval_s=INTERVAL_S,
                             initial_model_version="shapes-1", reconnect_max_s=2.0)
        cleanups.append(lambda: sim.stop(graceful=False))
        rig = Rig(broker, url, postgres, node, sim, device_ids)
        created.append(rig)
        return rig

    yield make
    for cleanup in reversed(cleanups):
        with contextlib.suppress(Exception):  # clean up the rest regardless
            cleanup()


@pytest.mark.parametrize("fault", FAULTS, ids=[fault.name for fault in FAULTS])
def test_every_qos1_report_is_stored_exactly_once_across_a_restart(fault: Fault, rig_factory) -> None:
    rig = rig_factory(fault.private_database)
    rig.sim.start()
    time.sleep(3.0)
    fault.inject(rig)
    time.sleep(3.0)
    rig.sim.stop_telemetry()
    rig.sim.wait_drained(timeout_s=90)
    generated = rig.sim.telemetry_message_ids()
    assert len(generated) > DEVICES * 8, "the fleet hardly reported; the test would prove nothing"
    assert rig.sim.stats().telemetry_dropped == 0

    assert_every_report_stored_once(rig.database_url, rig.device_ids, generated, timeout_s=90, settle_s=1.0,
                                    what=f"{len(generated)} reports stored after {fault.name}")
    assert fault.evidence(rig), f"the {fault.name} did not visibly disturb the stream"
