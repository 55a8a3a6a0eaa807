"""Dispatch limits, driven tick by tick with an explicit clock: the rate limit and
maintenance windows (real broker and database; the engine is called directly)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cloud.core.timestamps import as_utc
from cloud.rollout.engine import EngineConfig, RolloutEngine
from tests.rollout.fleet_helpers import ARM, X86, create, fast_spec, publish_constant, rows, start_fleet

pytestmark = pytest.mark.integration


@pytest.fixture
def engine_in_plane() -> bool:
    return False


def _engine(plane, published: list[str]) -> RolloutEngine:
    def publish(command) -> None:
        published.append(command.device_id)
        plane.mqtt.publish_command(command)

    return RolloutEngine(plane.engine, publish, plane.base_url, config=EngineConfig(tick_s=1.0), name="manual")


def test_dispatch_rate_limit_and_maintenance_window(plane, api, tmp_path: Path) -> None:
    old = publish_constant(plane, tmp_path, "cam-old")
    new = publish_constant(plane, tmp_path, "cam-new")
    fleet = start_fleet(plane, api, {X86: 12, ARM: 8}, old)
    try:
        published: list[str] = []
        engine = _engine(plane, published)
        spec = fast_spec("paced", {"package_id": new.package_id}, stages=[{"percent": 100}], dispatch_rate_per_s=3)
        detail = create(api, spec)
        created = as_utc(datetime.fromisoformat(detail["created_at"]))
        engine.tick_rollout(detail["id"], created + timedelta(seconds=1))
        assert len(published) == 3  # one second's budget at 3 per second
        engine.tick_rollout(detail["id"], created + timedelta(seconds=2))
        assert len(published) == 6
        # Eight idle seconds (inside every timeout) save up at most two ticks' worth.
        engine.tick_rollout(detail["id"], created + timedelta(seconds=10))
        assert len(published) == 12
        assert len(set(published)) == len(published)

        # A window that excludes "now": nothing is dispatched until it opens.
        now = datetime.now(UTC)
        closed_start, closed_end = (now + timedelta(hours=2)).time(), (now + timedelta(hours=3)).time()
        windowed = fast_spec("windowed", {"package_id": new.package_id}, target={"hardware_profiles": [ARM]},
                             maintenance_windows=[{"start": closed_start.strftime("%H:%M"),
                                                   "end": closed_end.strftime("%H:%M")}])
        api.post(f"/api/v1/rollouts/{detail['id']}/cancel")
        second = create(api, windowed)
        published.clear()
        moment = as_utc(datetime.fromisoformat(second["created_at"]))
        engine.tick_rollout(second["id"], moment + timedelta(seconds=1))
        assert published == [] and {r["state"] for r in rows(api, second["id"]).values()} == {"pending"}
        engine.tick_rollout(second["id"], moment + timedelta(hours=2, minutes=30))
        assert published  # the window opened
    finally:
        fleet.stop()
