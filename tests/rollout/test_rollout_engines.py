"""The engine resumes after being killed, and two engines on one PostgreSQL never
dispatch a device twice. Engines run as separate processes (``python -m cloud.rollout.run``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from sqlmodel import Session, select

from cloud.rollout.engine import EngineConfig, RolloutEngine
from cloud.rollout.tables import Rollout
from tests.rollout.fleet_helpers import (
    ARM,
    X86,
    actions,
    create,
    fast_spec,
    jobs_per_device,
    publish_constant,
    rows,
    start_fleet,
    wait_state,
)
from tests.support.services import REQUIRE_SERVICES, wait_for

pytestmark = pytest.mark.integration

FLEET = {X86: 40, ARM: 20}


@pytest.fixture
def engine_in_plane() -> bool:
    return False  # these tests start and kill engine processes themselves


def _spawn_engine(plane, database_url: str, name: str, tmp_path: Path) -> subprocess.Popen[bytes]:
    log = (tmp_path / f"{name}.log").open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "cloud.rollout.run", "--database-url", database_url, "--mqtt-url", plane.broker_url,
         "--topic-prefix", plane.settings.topic_prefix, "--data-dir", str(plane.settings.data_dir),
         "--base-url", plane.base_url, "--tick-s", "0.1", "--name", name],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()


def _assert_dispatched_once(plane, fleet, package_id: str) -> None:
    received = fleet.log.for_package(package_id)
    assert len(received) == sum(FLEET.values())
    assert set(received.values()) == {1}, {d: n for d, n in received.items() if n != 1}
    assert set(jobs_per_device(plane, package_id).values()) == {1}
    assert set(fleet.running().values()) == {package_id}


def test_engine_killed_mid_rollout_resumes_and_completes_without_double_dispatch(
        plane, api, database_url: str, tmp_path: Path) -> None:
    old = publish_constant(plane, tmp_path, "cam-old")
    new = publish_constant(plane, tmp_path, "cam-new")
    fleet = start_fleet(plane, api, FLEET, old)
    engines: list[subprocess.Popen[bytes]] = []
    try:
        # A slow dispatch rate so the kill lands while stage 2 is half dispatched.
        detail = create(api, fast_spec("restart", {"package_id": new.package_id}, dispatch_rate_per_s=8))
        rollout_id = detail["id"]
        engines.append(_spawn_engine(plane, database_url, "first", tmp_path))

        def mid_dispatch() -> bool:
            states = [r["state"] for r in rows(api, rollout_id).values() if r["stage"] == 1]
            return "pending" in states and any(s != "pending" for s in states)

        wait_for(mid_dispatch, 90, 0.05, what="stage 2 partly dispatched")
        engines[0].send_signal(signal.SIGKILL)
        engines[0].wait(timeout=10)
        before = api.get(f"/api/v1/rollouts/{rollout_id}").json()
        assert before["state"] == "running" and before["stage"] == 1
        engines.append(_spawn_engine(plane, database_url, "second", tmp_path))
        done = wait_state(api, rollout_id)
        assert done["state"] == "completed", actions(done)
        actors = {d["actor"] for d in done["decisions"]}
        assert {"engine:first", "engine:second"} <= actors
        _assert_dispatched_once(plane, fleet, new.package_id)
    finally:
        for process in engines:
            _stop(process)
        fleet.stop()


def test_two_engines_on_one_postgresql_never_dispatch_a_device_twice(plane, api, database_url: str,
                                                                     tmp_path: Path) -> None:
    if database_url.startswith("sqlite"):
        if REQUIRE_SERVICES:
            pytest.fail("two engines need PostgreSQL row locks; set EDGEFLEET_TEST_DATABASE_URL")
        pytest.skip("two engines need PostgreSQL row locks (SQLite runs a single engine)")
    old = publish_constant(plane, tmp_path, "cam-old")
    new = publish_constant(plane, tmp_path, "cam-new")
    fleet = start_fleet(plane, api, FLEET, old)
    engines = [_spawn_engine(plane, database_url, name, tmp_path) for name in ("left", "right")]
    try:
        detail = create(api, fast_spec("twins", {"package_id": new.package_id}))
        done = wait_state(api, detail["id"])
        assert done["state"] == "completed", actions(done)
        _assert_dispatched_once(plane, fleet, new.package_id)
    finally:
        for process in engines:
            _stop(process)
        fleet.stop()


def test_an_engine_skips_a_rollout_another_engine_has_locked(plane, api, database_url: str, tmp_path: Path) -> None:
    if database_url.startswith("sqlite"):
        if REQUIRE_SERVICES:
            pytest.fail("row locks need PostgreSQL; set EDGEFLEET_TEST_DATABASE_URL")
        pytest.skip("SQLite has no row locks")
    old = publish_constant(plane, tmp_path, "cam-old")
    new = publish_constant(plane, tmp_path, "cam-new")
    fleet = start_fleet(plane, api, {X86: 6, ARM: 4}, old)
    published: list[str] = []
    engine = RolloutEngine(plane.engine, lambda command: published.append(command.device_id), plane.base_url,
                           config=EngineConfig(tick_s=0.1), name="probe")
    try:
        rollout_id = create(api, fast_spec("locked", {"package_id": new.package_id}))["id"]
        with Session(plane.engine) as holder:
            # Another engine's transaction holds the rollout row: this engine must not wait, nor dispatch.
            holder.exec(select(Rollout).where(Rollout.id == rollout_id).with_for_update()).one()
            engine.tick()
            assert published == []
        engine.tick()
        assert len(published) == 2  # the first stage: one device per stratum
    finally:
        fleet.stop()
