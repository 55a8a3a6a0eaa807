"""Fleet benchmark: N simulated devices against real Mosquitto and PostgreSQL.

    python tools/bench/fleet.py --devices 5000

1. A fresh PostgreSQL database (next to ``--database-url``), migrated, with N devices
   registered and one package to roll out.
2. Control-plane processes share that database: one API node (``edgefleet serve``
   with ingest disabled) and ingest nodes (``python -m cloud.workers.ingest_node``)
   splitting device traffic through one MQTT shared subscription group, with
   persistent sessions and acknowledgements after commit.
3. All N devices connect (tools/fleet_sim.py: one asyncio process, each device its own
   MQTT session with a retained status and Last Will), then stream telemetry at QoS 1
   for ``--phase-s`` seconds with one node, and again with two. A phase's ingest rate
   is (reports generated in the phase) / (time until the last of them is committed),
   so it is the offered rate when ingest keeps up and ingest's capacity when it lags.
   While the one-node phase runs, a separate process times API requests.
4. One deployment to every device through the API (signed commands over MQTT); the
   simulated devices answer with job reports; ``rollout_s`` runs from the POST until
   every job is final in the database.
5. ``lost`` = telemetry message ids the devices generated (and the broker
   acknowledged) that are not in the database at the end; duplicates would fail the run.

Everything runs on this machine, so the figures are for the whole system sharing its
cores (simulator, broker, database and nodes), which understates a real node. The last
line is ``bench-fleet: devices=<n> ingest_msgs_per_s=<x> ingest_scaling_2w=<ratio>
lost=<n> api_p95_ms=<y> rollout_s=<z>``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

import httpx  # noqa: E402
from sqlalchemy import text  # noqa: E402
from sqlmodel import Session  # noqa: E402

from cloud.core.db import make_engine, migrate  # noqa: E402
from tools.fleet_sim import FleetSimulator  # noqa: E402

PROBE_SCRIPT = r"""
import json, random, sys, time, httpx
base, token, seconds, ids = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4].split(",")
paths = [lambda: "/api/v1/devices?limit=50", lambda: f"/api/v1/devices/{random.choice(ids)}",
         lambda: f"/api/v1/devices/{random.choice(ids)}/telemetry?limit=20", lambda: "/api/v1/health"]
latencies, errors = [], 0
with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        path = random.choice(paths)()
        started = time.perf_counter()
        response = client.get(path)
        latencies.append((time.perf_counter() - started) * 1000)
        errors += response.status_code >= 400
        time.sleep(0.02)
print(json.dumps({"latencies_ms": latencies, "errors": errors}))
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


class Database:
    def __init__(self, admin_url: str) -> None:
        import psycopg

        self.name = f"ef_bench_{uuid.uuid4().hex[:8]}"
        self.admin_plain = admin_url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(self.admin_plain, autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{self.name}"')
        self.url = f"{admin_url.rsplit('/', 1)[0]}/{self.name}"
        migrate(self.url)
        self.engine = make_engine(self.url)

    def setup(self, device_ids: list[str]) -> tuple[str, str]:
        """Register devices and one package; return (package id, admin API token)."""
        from cloud.fleet.tables import Device, ModelVersion, Package
        from cloud.security.tables import Role
        from cloud.security.tokens import create_api_token

        with Session(self.engine) as session:
            for start in range(0, len(device_ids), 1000):
                session.add_all([Device(id=device_id) for device_id in device_ids[start : start + 1000]])
                session.flush()
            model = ModelVersion(name="bench", version="bench-2", dataset_id="bench", onnx_path="/dev/null",
                                 onnx_sha256="0" * 64)
            session.add(model)
            session.flush()
            assert model.id is not None
            session.add(Package(id="pkg-bench-2", model_version_id=model.id, model_version="bench-2",
                                hardware_profiles=["x86-64-avx2"], manifest_sha256="0" * 64, size_bytes=0,
                                path="/nonexistent"))
            session.commit()
            token, _ = create_api_token(session, name="bench", role=Role.ADMIN)
        return "pkg-bench-2", token

    def scalar(self, sql: str, **params: object) -> int:
        with self.engine.connect() as connection:
            return int(connection.execute(text(sql), params).scalar_one())

    def telemetry_ids(self) -> set[str]:
        with self.engine.connect() as connection:
            return {row[0] for row in connection.execute(text("SELECT message_id FROM telemetry"))}

    def drop(self) -> None:
        import psycopg

        self.engine.dispose()
        with psycopg.connect(self.admin_plain, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


class Node:
    """A control-plane process sharing the benchmark's database and broker.

    ``api``: ``edgefleet serve`` with ingest disabled (API and command publishing only);
    ``ingest``: ``python -m cloud.workers.ingest_node``, one member of the shared
    subscription group with its own persistent session. Separate processes, so API
    latency never waits for ingest's share of a Python interpreter.
    """

    def __init__(self, kind: str, index: int, *, database_url: str, broker_url: str, prefix: str, group: str,
                 data_dir: Path, log_dir: Path) -> None:
        self.kind = kind
        self.port = free_port()
        self.client_id = f"{group}-{kind}{index}"
        self.log_path = log_dir / f"{kind}{index}.log"
        self.status_file = log_dir / f"{kind}{index}.json"
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO_ROOT),
            "EDGEFLEET_DATABASE_URL": database_url,
            "EDGEFLEET_MQTT_URL": broker_url,
            "EDGEFLEET_TOPIC_PREFIX": prefix,
            "EDGEFLEET_DATA_DIR": str(data_dir),
            "EDGEFLEET_API_PORT": str(self.port),
            "EDGEFLEET_INGEST_CLIENT_ID": self.client_id,
            "EDGEFLEET_INGEST_SHARED_GROUP": group,
            "EDGEFLEET_INGEST_RECEIVE_MAXIMUM": "65535",
            "EDGEFLEET_INGEST_ENABLED": "true" if kind == "ingest" else "false",
            "EDGEFLEET_RETENTION_ENABLED": "false",
            "EDGEFLEET_ROLLOUT_ENGINE_ENABLED": "false",
        }
        if kind == "api":
            command = [sys.executable, "-c", "from cloud.cli import app; app()", "serve", "--log-level", "WARNING"]
        else:
            command = [sys.executable, "-m", "cloud.workers.ingest_node", "--status-file", str(self.status_file)]
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(command, env=env, cwd=REPO_ROOT, stdout=log_file,
                                            stderr=subprocess.STDOUT)
        self.base_url = f"http://127.0.0.1:{self.port}"

    def _ready(self) -> bool:
        if self.kind == "ingest":
            try:
                return bool(json.loads(self.status_file.read_text()).get("connected"))
            except (OSError, ValueError):
                return False
        try:
            return bool(httpx.get(f"{self.base_url}/api/v1/health", timeout=2).json().get("mqtt_connected"))
        except (httpx.HTTPError, ValueError):
            return False

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.kind} node exited: {self.log_path.read_text()[-2000:]}")
            if self._ready():
                return
            time.sleep(0.5)
        raise RuntimeError(f"{self.kind} node did not become ready")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()


def purge_ingest_sessions(broker_url: str, client_ids: list[str]) -> None:
    """Remove the nodes' persistent sessions from a shared broker (clean start, no expiry)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from agent.contract.broker_url import parse_broker_url

    address = parse_broker_url(broker_url)
    for client_id in client_ids:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        try:
            client.connect(address.host, address.port, clean_start=True)
            client.loop_start()
            time.sleep(0.2)
            client.disconnect()
            client.loop_stop()
        except OSError:
            pass


def wait_stored(db: Database, target: int, stall_s: float = 20.0) -> float:
    """Poll until ``target`` telemetry rows exist; return when (monotonic). If the count stops
    moving for ``stall_s`` first, return then: the missing rows are lost, and counted later."""
    last_count, last_change = -1, time.monotonic()
    while True:
        count = db.scalar("SELECT count(*) FROM telemetry")
        now = time.monotonic()
        if count >= target:
            return now
        if count != last_count:
            last_count, last_change = count, now
        elif now - last_change > stall_s:
            log(f"ingest stalled at {count} of {target} rows")
            return last_change
        time.sleep(0.2)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of processes (Linux /proc), to normalise throughput by CPU spent."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def stream_phase(sim: FleetSimulator, db: Database, seconds: float, label: str, ingest_pids: list[int]) -> float:
    """Stream for ``seconds``; return reports per second from phase start to the last commit.

    Also logs the ingest processes' CPU per report: on a machine whose cores are shared
    with the simulator, the broker and PostgreSQL, reports per ingest CPU-second is the
    figure that carries over to a dedicated node.
    """
    before = sim.stats().telemetry_generated
    stored_before = db.scalar("SELECT count(*) FROM telemetry")
    cpu_before = cpu_seconds(ingest_pids)
    started = time.monotonic()
    sim.resume_telemetry()
    time.sleep(seconds)
    sim.stop_telemetry()
    sim.wait_drained(timeout_s=300)
    generated = sim.stats().telemetry_generated - before
    done = wait_stored(db, stored_before + generated)
    rate = generated / (done - started)
    cpu = cpu_seconds(ingest_pids) - cpu_before
    log(f"{label}: {generated} reports generated in {seconds:.0f}s "
        f"(offered {generated / seconds:.0f}/s), stored at {rate:.0f}/s; "
        f"ingest CPU {cpu:.1f}s = {generated / cpu if cpu else float('nan'):.0f} reports per ingest CPU-second")
    return rate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=5000)
    parser.add_argument("--broker", default="mqtt://127.0.0.1:1883")
    parser.add_argument("--database-url", default=os.environ.get(
        "EDGEFLEET_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"))
    # 6 s at 0.5 s offers ~10,000 reports/s for 60,000 reports: more than one node stores, so the
    # phase measures capacity, yet within what Mosquitto holds for a lagging subscriber (its
    # in-flight window of 65,535 plus max_queued_messages) so nothing is dropped.
    parser.add_argument("--phase-s", type=float, default=6.0, help="seconds of streaming per phase")
    parser.add_argument("--interval", type=float, default=0.5, help="telemetry interval per device, seconds")
    args = parser.parse_args(argv)

    run_id = uuid.uuid4().hex[:6]
    prefix, group = f"bench-{run_id}/ef/v1", f"bench{run_id}"
    device_ids = [f"bf{run_id}-{i:05d}" for i in range(args.devices)]
    workdir = Path(tempfile.mkdtemp(prefix="ef-bench-fleet-"))
    db = Database(args.database_url)
    nodes: list[Node] = []
    sim: FleetSimulator | None = None
    try:
        package_id, token = db.setup(device_ids)
        log(f"database {db.name}: {args.devices} devices registered")
        def start_node(kind: str, index: int) -> Node:
            node = Node(kind, index, database_url=db.url, broker_url=args.broker, prefix=prefix, group=group,
                        data_dir=workdir / "plane", log_dir=workdir)
            nodes.append(node)
            node.wait_ready()
            return node

        api = start_node("api", 1)
        start_node("ingest", 1)
        sim = FleetSimulator(args.broker, device_ids, topic_prefix=prefix, telemetry_interval_s=args.interval,
                             initial_model_version="bench-1", initial_package_id="pkg-bench-1",
                             connect_rate_per_s=1000)
        sim.stop_telemetry()
        started = time.monotonic()
        sim.start(timeout_s=300)
        log(f"{args.devices} devices connected in {time.monotonic() - started:.1f}s")
        online = db.scalar("SELECT count(*) FROM device WHERE online")
        log(f"{online} devices online in the database")

        probe = subprocess.Popen(
            [sys.executable, "-c", PROBE_SCRIPT, api.base_url, token, str(args.phase_s),
             ",".join(device_ids[:: max(1, len(device_ids) // 200)])],
            stdout=subprocess.PIPE, text=True,
        )
        rate_1w = stream_phase(sim, db, args.phase_s, "1 node", [n.process.pid for n in nodes if n.kind == "ingest"])
        probe_out, _ = probe.communicate(timeout=120)
        probe_result = json.loads(probe_out)
        latencies = sorted(probe_result["latencies_ms"])
        api_p95_ms = latencies[int(0.95 * (len(latencies) - 1))] if latencies else float("nan")
        log(f"API while ingesting: {len(latencies)} requests, p50 {latencies[len(latencies) // 2]:.1f} ms, "
            f"p95 {api_p95_ms:.1f} ms, errors {probe_result['errors']}")

        start_node("ingest", 2)
        rate_2w = stream_phase(sim, db, args.phase_s, "2 nodes", [n.process.pid for n in nodes if n.kind == "ingest"])

        started = time.monotonic()
        response = httpx.post(f"{api.base_url}/api/v1/deployments",
                              json={"package_id": package_id, "device_ids": device_ids},
                              headers={"Authorization": f"Bearer {token}"}, timeout=300)
        response.raise_for_status()
        deployment_id = response.json()["id"]
        log(f"deployment {deployment_id} created in {time.monotonic() - started:.1f}s")
        final_states = "('succeeded', 'failed', 'rejected')"
        final, last_change, rollout_done = -1, time.monotonic(), True
        while True:
            count = db.scalar(f"SELECT count(*) FROM device_job WHERE deployment_id = :d AND state IN {final_states}",
                              d=deployment_id)
            if count >= args.devices:
                break
            if count != final:
                final, last_change = count, time.monotonic()
            elif time.monotonic() - last_change > 60:
                log(f"rollout stalled: {count}/{args.devices} jobs final")
                rollout_done = False
                break
            time.sleep(0.25)
        rollout_s = time.monotonic() - started if rollout_done else float("nan")
        succeeded = db.scalar("SELECT count(*) FROM device_job WHERE deployment_id = :d AND state = 'succeeded'",
                              d=deployment_id)
        log(f"rollout: {succeeded}/{args.devices} succeeded in {rollout_s:.1f}s")

        generated_ids = set(sim.telemetry_message_ids())
        stored_ids = db.telemetry_ids()
        rows = db.scalar("SELECT count(*) FROM telemetry")
        lost = len(generated_ids - stored_ids)
        if rows != len(stored_ids):
            raise AssertionError(f"{rows - len(stored_ids)} telemetry rows duplicated")
        stats = sim.stats()
        log(f"simulator: generated {stats.telemetry_generated}, acked {stats.telemetry_acked}, "
            f"dropped {stats.telemetry_dropped}, resent {stats.resent}")
        print(f"bench-fleet: devices={args.devices} ingest_msgs_per_s={rate_1w:.0f} "
              f"ingest_scaling_2w={rate_2w / rate_1w:.2f} lost={lost} api_p95_ms={api_p95_ms:.1f} "
              f"rollout_s={rollout_s:.1f}", flush=True)
        return 0
    finally:
        if sim is not None:
            sim.stop(purge_sessions=True)
        for node in nodes:
            node.stop()
        purge_ingest_sessions(args.broker, [node.client_id for node in nodes])
        db.drop()


if __name__ == "__main__":
    raise SystemExit(main())
