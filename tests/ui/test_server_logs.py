"""The server log at INFO stays readable: dashboard live refreshes and /metrics scrapes
leave no access-log lines, per-device rollout transitions are DEBUG, and what people
do (page loads, actions) and what fails is still logged."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from sqlmodel import Session

from cloud.api.main import create_app
from cloud.ops.access_log import ACCESS_LOGGER, is_poll
from cloud.rollout.tables import Rollout
from cloud.security.tables import Role
from tests.support.services import free_port, wait_for
from tests.ui.helpers import dashboard_login, make_token, page_csrf

pytestmark = pytest.mark.integration

LIVE_PATHS = ("/ui/fleet?partial=1", "/ui/rollouts?partial=1", "/ui/models?partial=1", "/ui/alerts?partial=1",
              "/metrics")
REFRESHES = 8


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def at_info(self, prefix: str) -> list[logging.LogRecord]:
        return [r for r in self.records if r.levelno >= logging.INFO and r.name.startswith(prefix)]


@pytest.fixture
def server_at_info(control_plane) -> Iterator[tuple[str, _Records]]:
    """The control plane's app served by uvicorn at log level INFO, as `edgefleet serve` runs it."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(control_plane), host="127.0.0.1", port=port, log_level="info",
                                          lifespan="off"))
    records = _Records()
    watched = [logging.getLogger(ACCESS_LOGGER), logging.getLogger("cloud")]
    levels = [logger.level for logger in watched]
    for logger in watched:
        logger.addHandler(records)
    logging.getLogger("cloud").setLevel(logging.DEBUG)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, 15, what="uvicorn started")
    try:
        yield f"http://127.0.0.1:{port}", records
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        for logger, level in zip(watched, levels, strict=True):
            logger.removeHandler(records)
            logger.setLevel(level)


def _state(plane: Any, rollout_id: str) -> str:
    with Session(plane.engine) as session:
        rollout = session.get(Rollout, rollout_id)
        assert rollout is not None
        return str(rollout.state)


def _access_paths(records: _Records) -> list[str]:
    return [f"{r.args[1]} {r.args[2]} {r.args[4]}" for r in records.at_info(ACCESS_LOGGER)
            if isinstance(r.args, tuple) and len(r.args) >= 5]


def test_poll_detection() -> None:
    assert is_poll("GET", "/ui/fleet?partial=1") and is_poll("GET", "/ui/rollouts/ro-1?q=x&partial=1")
    assert is_poll("GET", "/metrics")
    assert not is_poll("GET", "/ui/fleet") and not is_poll("POST", "/ui/rollouts?partial=1")
    assert not is_poll("GET", "/api/v1/fleet?partial=1")


def test_live_refreshes_leave_the_info_log_quiet(server_at_info, fleet) -> None:
    base_url, records = server_at_info
    token = make_token(fleet.plane, Role.OPERATOR)
    # uvicorn's access logger is one per process: forget the fleet's set-up requests.
    records.records.clear()
    with httpx.Client(base_url=base_url, timeout=30) as client:
        assert dashboard_login(client, token, "/ui/rollouts").status_code == 303
        assert client.get("/ui/rollouts").status_code == 200
        spec = {"name": "quiet logs", "release": {"package_id": fleet.v2.package_id}, "target": {"all_devices": True},
                "stages": [{"count": 2}, {"percent": 100}], "soak_s": 1,
                "gates": {"min_frames": 20, "min_latency_windows": 1, "probation_min_windows": 1, "gate_wait_s": 600,
                          "control_window_s": 120}}
        spec_form = {"csrf": page_csrf(client, "/ui/rollouts"), "confirm": "yes", "spec": json.dumps(spec)}
        created = client.post("/ui/rollouts", data=spec_form)
        assert created.status_code == 303 and "/ui/rollouts/ro-" in created.headers["location"], created.headers
        rollout_id = created.headers["location"].split("/ui/rollouts/")[1].split("?")[0]

        # The dashboard's pollers and a scraper, while the engine drives every device through the rollout.
        polls = 0
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            for path in (*LIVE_PATHS, f"/ui/rollouts/{rollout_id}?partial=1"):
                assert client.get(path).status_code == 200, path
                polls += 1
            state = _state(fleet.plane, rollout_id)  # from the database: no request of its own in the log
            if state in ("completed", "aborted", "cancelled") and polls >= REFRESHES * (len(LIVE_PATHS) + 1):
                break
            time.sleep(0.2)
        assert state == "completed", state
        # Not logged in: the poller's 401 is an error and is logged.
        assert httpx.get(f"{base_url}/ui/fleet?partial=1").status_code == 401

    logged = _access_paths(records)
    # The login page (its CSRF value), the login, the page and the page read again for the
    # form's CSRF value, the form, the refused poll: every line a person's action, none a poll.
    assert logged == ["GET /ui/login 200", "POST /ui/login 303", "GET /ui/rollouts 200", "GET /ui/rollouts 200",
                      "POST /ui/rollouts 303", "GET /ui/fleet?partial=1 401"], logged

    devices = len(fleet.all_ids)
    transitions = [r for r in records.records if r.levelno == logging.DEBUG and "-> " in r.getMessage()
                   and r.name == "cloud.rollout.engine"]
    assert len(transitions) >= 2 * devices  # each device went at least pending -> queued -> ... -> succeeded
    info = [r.getMessage() for r in records.at_info("cloud")]
    # Summaries only: created, one decision per stage end, and how it ended; however long the polls ran.
    assert any(m.startswith(f"rollout {rollout_id} created by operator:") for m in info), info
    assert any(m.startswith(f"rollout {rollout_id} stage 1 of 2: promote") for m in info), info
    assert any(f"rollout {rollout_id} stage 2 of 2: complete" in m for m in info), info
    assert len([m for m in info if rollout_id in m]) <= 5, info
    assert polls >= REFRESHES * len(LIVE_PATHS)


