"""Rollout benchmark: a staged rollout to N protocol-only simulated devices on a real broker.

    python tools/bench/rollout.py --devices 1000 [--database-url postgresql+psycopg://...]

1. Start a control plane in this process (ingest and rollout engine; no HTTP, the
   devices do not download in protocol mode) on the broker (default: the machine's
   Mosquitto) and a database (default: a fresh PostgreSQL database when
   EDGEFLEET_TEST_DATABASE_URL is set, else a SQLite file).
2. Register N devices on two hardware profiles and start them with
   ``tools/fleet_sim.py`` (one MQTT session each, multiplexed on one event loop),
   all running an "old" package.
3. Roll a new package out in four stages (1 %, 10 %, 50 %, 100 %) with every gate
   on and a 1 s soak, and time it from creation to completion.

``dispatch_per_s`` is commands published divided by the wall time of the engine passes
that published them (each: row locks, gate evaluation, job rows, commit, signing with
the director key, publishing at QoS 1); time between passes and soak time are not in it.
AWS IoT Jobs dispatches at most 1000 devices a minute (16.7 per second).
The last line is ``bench-rollout: devices=<n> completed=<n> seconds=<s> dispatch_per_s=<r>``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from sqlmodel import Session, col, select  # noqa: E402

from cloud.core.config import Settings  # noqa: E402
from cloud.fleet.tables import Device  # noqa: E402
from cloud.pipeline.quickstart import register_and_package  # noqa: E402
from cloud.rollout.service import create_rollout, get_rollout  # noqa: E402
from cloud.rollout.spec import RolloutSpec  # noqa: E402
from cloud.rollout.tables import RolloutDecision, RolloutDevice  # noqa: E402
from cloud.server import ControlPlane  # noqa: E402
from tools.fleet_sim import FleetSimulator  # noqa: E402

PROFILES = ("x86-64-avx2", "arm64-neon")
LABELS = ["circle", "cross", "square", "triangle"]


def _constant_onnx(path: Path) -> Path:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    from cloud.pipeline.train.trainer import DEFAULT_SPEC

    shape = list(DEFAULT_SPEC.input_shape(1))
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["input"], ["pooled"], axes=list(range(1, len(shape))), keepdims=0),
         helper.make_node("Unsqueeze", ["pooled", "axes"], ["column"]),
         helper.make_node("Add", ["column", "const"], ["logits"])],
        "bench", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", *shape[1:]])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(LABELS)])],
        initializer=[helper.make_tensor("axes", TensorProto.INT64, [1], [1]),
                     helper.make_tensor("const", TensorProto.FLOAT, [1, len(LABELS)],
                                        np.zeros(len(LABELS), dtype=np.float32).tolist())])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _database(args: argparse.Namespace, workdir: Path) -> tuple[str, tuple[str, str] | None]:
    admin = args.database_url or os.environ.get("EDGEFLEET_TEST_DATABASE_URL")
    if not admin:
        return f"sqlite:///{workdir / 'bench.db'}", None
    from tests.support.services import create_postgres_database

    url, name = create_postgres_database(admin)
    return url, (admin, name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--broker", default="mqtt://127.0.0.1:1883")
    parser.add_argument("--database-url", default=None, help="admin URL of a PostgreSQL server (a database is made)")
    parser.add_argument("--telemetry-interval-s", type=float, default=2.0)
    parser.add_argument("--timeout-s", type=float, default=600.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    workdir = Path(tempfile.mkdtemp(prefix="ef-bench-rollout-"))
    database_url, created_db = _database(args, workdir)
    os.environ["EDGEFLEET_ROLLOUT_TICK_S"] = "0.2"
    prefix = f"bench-{uuid.uuid4().hex[:8]}/ef/v1"
    plane = ControlPlane(Settings(data_dir=workdir / "cloud", database_url=database_url, mqtt_url=args.broker,
                                  topic_prefix=prefix, api_port=0))
    plane.start()
    sims: list[FleetSimulator] = []
    try:
        onnx_path = _constant_onnx(workdir / "model.onnx")
        old, new = (register_and_package(plane.engine, onnx_path=onnx_path, labels=LABELS, model_name=name,
                                         dataset_id="bench", packages_dir=plane.settings.packages_dir,
                                         hardware_profiles=list(PROFILES)) for name in ("bench-old", "bench-new"))
        for package in (old, new):
            plane.security.publish_package(plane.settings.packages_dir / package.package_id)
        ids = {p: [f"{p.split('-')[0]}-{i:05d}" for i in range(args.devices) if i % len(PROFILES) == n]
               for n, p in enumerate(PROFILES)}
        with Session(plane.engine) as session:
            session.add_all([Device(id=d, hardware_profile=p) for p, members in ids.items() for d in members])
            session.commit()
        for index, (profile, members) in enumerate(ids.items()):
            sim = FleetSimulator(args.broker, members, topic_prefix=prefix, hardware_profile=profile,
                                 telemetry_interval_s=args.telemetry_interval_s, initial_model_version=old.model_version,
                                 initial_package_id=old.package_id, record_message_ids=False, seed=index)
            sim.start()
            sims.append(sim)
        deadline = time.monotonic() + 120
        while True:
            with Session(plane.engine) as session:
                online = len(session.exec(select(Device.id).where(col(Device.online).is_(True))).all())
            if online == args.devices:
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"only {online}/{args.devices} devices came online")
            time.sleep(0.5)

        spec = RolloutSpec.model_validate({
            "name": "bench", "release": {"package_id": new.package_id}, "target": {"all_devices": True},
            "stages": [{"percent": 1}, {"percent": 10}, {"percent": 50}, {"percent": 100}], "soak_s": 1,
            "dispatch_rate_per_s": 20_000, "max_retries": 1,
            "timeouts": {"queued_s": 120, "downloading_s": 120, "installing_s": 120, "probation_s": 120},
            "gates": {"min_frames": 20, "min_latency_windows": 3, "probation_min_windows": 1, "gate_wait_s": 120,
                      "control_window_s": 20},
        })
        started = time.monotonic()
        with Session(plane.engine) as session:
            rollout_id = create_rollout(session, spec, actor="bench").id
        while True:
            with Session(plane.engine) as session:
                state = get_rollout(session, rollout_id).state
            if state in ("completed", "aborted", "cancelled", "awaiting_approval"):
                break
            if time.monotonic() - started > args.timeout_s:
                break
            time.sleep(0.2)
        seconds = time.monotonic() - started
        with Session(plane.engine) as session:
            completed = len(session.exec(select(RolloutDevice.id).where(
                RolloutDevice.rollout_id == rollout_id, RolloutDevice.state == "succeeded")).all())
            for decision in session.exec(select(RolloutDecision).where(RolloutDecision.rollout_id == rollout_id)
                                         .order_by(col(RolloutDecision.id))):
                print(f"  {decision.created_at:%H:%M:%S} stage {decision.stage} {decision.action}: "
                      f"{decision.reason[:300]}")
            states = session.exec(select(RolloutDevice.state, RolloutDevice.stratum).where(
                RolloutDevice.rollout_id == rollout_id)).all()
            print(f"  device states: {dict(Counter(states))}")
        assert plane.rollouts is not None
        dispatched, dispatch_s = plane.rollouts.dispatched_total, plane.rollouts.dispatch_seconds
        print(f"rollout {rollout_id} ended {state}; ingest {plane.ingest.counters.as_dict()}")
        print(f"bench-rollout: devices={args.devices} completed={completed} seconds={seconds:.1f} "
              f"dispatch_per_s={dispatched / max(dispatch_s, 1e-3):.0f}")
    finally:
        for sim in sims:
            sim.stop(graceful=False)
        plane.stop()
        if created_db is not None:
            from tests.support.services import drop_postgres_database

            drop_postgres_database(*created_db)
    return 0


if __name__ == "__main__":
    sys.exit(main())
