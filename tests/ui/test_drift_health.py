"""The fleet page says whether each device is right, not only running: drift state and model health;
the navigation counts open drift alerts; the device page says what to do before the first drift
window and offers to confirm a camera's baseline."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlmodel import Session

from cloud.dashboard.auth import COOKIE_NAME, DashboardUser
from cloud.dashboard.data import drift_state, model_health
from cloud.dashboard.routes import templates
from cloud.security.tables import Role
from cloud.security.tokens import Principal
from tests.support.services import wait_for
from tests.ui.helpers import dashboard_login, make_token, page_csrf, publish_reports

USER = DashboardUser("ops", Role.OPERATOR, Principal(Role.OPERATOR, "ops"), csrf="c" * 32)


def _render(name: str, **context: object) -> str:
    return templates.get_template(name).render(user=USER, nav="fleet", now=datetime.now(UTC), live_template=None,
                                               **context)


def test_model_health_sees_a_collapsed_model_and_inference_errors() -> None:
    assert model_health({"class_counts": {"circle": 97, "square": 3}})[0] == "collapsed"
    _, why = model_health({"class_counts": {"circle": 97, "square": 3}})
    assert "circle" in why and "97%" in why
    assert model_health({"class_counts": {"circle": 60, "square": 40}})[0] == "ok"
    assert model_health({"class_counts": {"circle": 5}})[0] == "no data"  # too few predictions to judge
    assert model_health({"class_counts": {"circle": 60, "square": 40}, "inference_errors": 4})[0] == "inference errors"
    # Without telemetry class counts, the last drift window's predicted classes decide.
    assert model_health({}, {"last_window_class_counts": [30, 0, 0, 0]})[0] == "collapsed"
    assert drift_state(None)[0] == "no data"
    assert drift_state({"state": "alert", "open_alerts": 2}) == ("alert", "2 open drift alert(s)")
    assert drift_state({"state": "baseline pending"})[0] == "baseline pending"


def _row(device_id: str, **extra: Any) -> dict[str, Any]:
    return {"device_id": device_id, "online": True, "health": "healthy", "hardware_profile": "x86-64-avx2",
            "model_version": "shapes-1", "runtime": "onnxruntime", "fps": 10.0, "p95_latency_ms": 3.0,
            "mean_confidence": 0.9, "last_seen_at": None, **extra}


def test_fleet_rows_show_drift_and_model_state_and_the_nav_counts_open_alerts() -> None:
    rows = [_row("cam-1", drift="alert", drift_why="1 open drift alert(s)", model_health="collapsed",
                 model_why="one class (circle) in 100% of the last window's 120 predictions"),
            _row("cam-2", drift="baseline pending", drift_why="", model_health="ok", model_why=""),
            _row("cam-3", drift="no data", drift_why="", model_health="no data", model_why="")]
    summary = {"total": 3, "online": 3, "offline": 0, "versions": 1, "drift_alerts": 1, "unhealthy_models": 1}
    html = _render("fleet.html", rows=rows, matching=3, limit=200, summary=summary, profiles=[], versions=[],
                   filters={"q": "", "status": "all", "profile": "", "version": ""}, open_alerts=2)
    assert '<span class="badge badge-alert" title="1 open drift alert(s)">alert</span>' in html
    assert "badge-collapsed" in html and "in 100% of the last window" in html
    assert "badge-baseline-pending" in html and ">no data<" in html
    assert 'data-testid="count-drift-alerts">1<' in html and 'data-testid="count-unhealthy-models">1<' in html
    assert 'data-testid="nav-open-alerts" aria-label="2 open">2<' in html
    assert "nav-open-alerts" not in _render("fleet.html", rows=[], matching=0, limit=200, summary=summary,
                                            profiles=[], versions=[], filters={"q": "", "status": "all",
                                                                               "profile": "", "version": ""},
                                            open_alerts=0)


def _device_page(**extra: Any) -> str:
    device = {"id": "cam-1", "online": True, "hardware_profile": "x86-64-avx2", "running_model_version": "shapes-1",
              "running_package_id": "shapes-1-abc", "runtime": "onnxruntime", "agent_version": "1",
              "last_seen_at": None}
    context: dict[str, Any] = {"device": device, "recent": [], "charts": {}, "has_drift_api": True,
                               "drift_available": False, "samples": [], "has_samples_api": True, "jobs": [],
                               "alerts": [], "baselines": [], "cameras": None, "message": None, "error": None,
                               "monitoring_defaults": {"window_frames": 30, "window_s": 30.0, "baseline_windows": 5}}
    context.update(extra)
    return _render("device.html", **context)


def test_device_page_says_what_to_do_before_the_first_drift_window_and_offers_baseline_confirmation() -> None:
    empty = _device_page()
    assert "No drift windows from this device yet" in empty
    assert "<code>monitoring.window_s</code> = 30 s" in empty and "<code>monitoring.window_frames</code> = 30" in empty
    assert "edgefleet drift reference PACKAGE --data DIR" in empty and "shapes-1-abc" in empty
    assert "first 5 tested windows" in empty
    proposed = _device_page(baselines=[{"camera": "main", "package_id": "shapes-1-abc", "state": "proposed",
                                        "windows": 5, "windows_needed": 5, "confirmed_at": None}])
    assert 'action="/ui/devices/cam-1/drift/baseline/confirm?camera=main&amp;package_id=shapes-1-abc"' in proposed
    assert 'data-action="confirm-baseline"' in proposed
    collecting = _device_page(baselines=[{"camera": "main", "package_id": "p", "state": "collecting", "windows": 2,
                                          "windows_needed": 5, "confirmed_at": None}])
    assert "waiting for 3 more window(s)" in collecting and "confirm-baseline" not in collecting


@pytest.mark.integration
def test_live_fleet_page_flags_a_collapsed_model_and_an_open_alert(control_plane, api) -> None:
    from cloud.monitor.tables import DriftAlert, DriftBaseline

    for device_id in ("cam-stuck", "cam-fine"):
        assert api.post("/api/v1/devices", json={"id": device_id}).status_code == 201
    # publish_reports' windows predict one class for every frame: a collapsed model.
    publish_reports(control_plane, "cam-stuck", model_version=None)
    wait_for(lambda: api.get("/api/v1/devices/cam-stuck/telemetry").json(), 20, what="telemetry from cam-stuck")
    with Session(control_plane.engine) as session:
        session.add(DriftAlert(id="al-ui-0001", device_id="cam-stuck", package_id="p1", score=9.0))
        session.add(DriftBaseline(device_id="cam-fine", camera="main", package_id="p1", state="proposed", windows=5,
                                  frames=150, k=2.0))
        session.commit()
    states = {d["device_id"]: d for d in api.get("/api/v1/drift/devices").json()}
    assert states["cam-stuck"]["state"] == "alert" and states["cam-stuck"]["open_alerts"] == 1

    token = make_token(control_plane, Role.OPERATOR)
    with httpx.Client(base_url=control_plane.base_url, timeout=15) as client:
        assert dashboard_login(client, token, "/ui/fleet").status_code == 303
        assert COOKIE_NAME in client.cookies
        page = client.get("/ui/fleet")
        assert page.status_code == 200
        html = page.text
        stuck = html.split('data-device="cam-stuck"')[1].split("</tr>")[0]
        assert ">alert<" in stuck and ">collapsed<" in stuck, stuck
        assert 'data-testid="nav-open-alerts" aria-label="1 open">1<' in html
        device = client.get("/ui/devices/cam-fine").text
        assert 'data-action="confirm-baseline"' in device
        # The dashboard button acts through the API with the user's token.
        done = client.post("/ui/devices/cam-fine/drift/baseline/confirm?camera=main&package_id=p1",
                           data={"csrf": page_csrf(client, "/ui/devices/cam-fine"), "confirm": "yes"})
        assert done.status_code == 303 and "baseline+confirmed" in done.headers["location"], done.headers
    assert api.get("/api/v1/devices/cam-fine/drift/baseline").json()[0]["state"] == "confirmed"
