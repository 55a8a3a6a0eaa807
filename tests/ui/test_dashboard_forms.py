"""The dashboard's forms refuse bad input with a message that says what to fix, and its
login cannot be turned into an open redirect. Plain HTTP, no browser needed."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote_plus

import httpx
import pytest

from cloud.dashboard.auth import COOKIE_NAME
from cloud.security.tables import Role
from tests.ui.helpers import make_release, make_token

pytestmark = pytest.mark.integration


CSRF_FIELD = re.compile(r'name="csrf" value="([^"]+)"')


def _csrf(client: httpx.Client, path: str) -> str:
    """The CSRF value the page at ``path`` puts in its forms."""
    found = CSRF_FIELD.search(client.get(path).text)
    assert found, f"{path} has no form with a CSRF value"
    return found.group(1)


def _log_in(client: httpx.Client, token: str, next_path: str = "/ui/rollouts") -> httpx.Response:
    return client.post("/ui/login", data={"token": token, "next": next_path, "csrf": _csrf(client, "/ui/login")})


def _session(plane: Any, token: str) -> httpx.Client:
    client = httpx.Client(base_url=plane.base_url, timeout=15)
    response = _log_in(client, token)
    assert response.status_code == 303 and response.headers["location"] == "/ui/rollouts"
    assert COOKIE_NAME in client.cookies
    return client


def _flash(response: httpx.Response) -> str:
    assert response.status_code == 303, response.text
    return unquote_plus(response.headers["location"])


def test_bad_rollout_forms_say_what_to_fix(control_plane, tmp_path) -> None:
    token = make_token(control_plane, Role.OPERATOR)
    release = make_release(control_plane, tmp_path)
    client = _session(control_plane, token)
    try:
        csrf = _csrf(client, "/ui/rollouts")
        stale = client.post("/ui/rollouts", data={"csrf": "stale", "package_id": release.package_id, "stages": "100"})
        assert "reload the page" in _flash(stale)
        bad_stage = client.post("/ui/rollouts", data={"csrf": csrf, "package_id": release.package_id,
                                                      "stages": "10,lots"})
        assert "stage size 'lots' is not a number" in _flash(bad_stage)
        bad_yaml = client.post("/ui/rollouts", data={"csrf": csrf, "spec": "name: [unclosed"})
        assert "neither JSON nor YAML" in _flash(bad_yaml)
        # The API's own validation message comes through, naming the field.
        refused = client.post("/ui/rollouts", data={"csrf": csrf, "spec": '{"name": "x", "release": {}, '
                                                                        '"target": {"all_devices": true}}'})
        message = _flash(refused)
        assert "the control plane refused the rollout" in message and "release" in message
        unknown = client.post("/ui/rollouts/ro-nope/explode", data={"csrf": csrf, "confirm": "yes"})
        assert "unknown action 'explode'" in _flash(unknown)
        missing = client.get("/ui/rollouts/ro-nope")
        assert missing.status_code == 404 and "There is no rollout" in missing.text
        # Without JavaScript there is no confirm() dialog: the server asks on a page of its own.
        ask = client.post("/ui/rollouts/ro-nope/abort", data={"csrf": csrf})
        assert ask.status_code == 200 and "Yes, abort" in ask.text and 'name="confirm" value="yes"' in ask.text

    finally:
        client.close()

def test_login_and_session_edges(control_plane) -> None:
    with httpx.Client(base_url=control_plane.base_url, timeout=15) as client:
        # A crafted `next` cannot send the user off-site after logging in.
        token = make_token(control_plane, Role.VIEWER)
        response = _log_in(client, token, "//evil.example/ui")
        assert response.headers["location"] == "/ui/fleet"
        from sqlmodel import Session

        from cloud.security.tokens import create_api_token

        with Session(control_plane.engine) as session:
            device_token, _ = create_api_token(session, name="cam", role=Role.DEVICE, device_id="cam-01")
        refused = _log_in(client, device_token, "")
        assert refused.status_code == 401 and "device tokens cannot open the dashboard" in refused.text
    with httpx.Client(base_url=control_plane.base_url, timeout=15) as anonymous:
        # The live poller gets a 401 it can act on, not a login page to paste into the table.
        assert anonymous.get("/ui/fleet?partial=1").status_code == 401
        assert anonymous.get("/ui/fleet").status_code == 303


def test_fleet_page_shows_a_bounded_page_of_a_large_fleet(control_plane, api) -> None:
    for index in range(12):
        assert api.post("/api/v1/devices", json={"id": f"cam-{index:02d}"}).status_code == 201
    client = _session(control_plane, make_token(control_plane, Role.VIEWER))
    try:
        page = client.get("/ui/fleet?partial=1&limit=5")
        assert page.status_code == 200
        assert page.text.count("<tr data-device=") == 5
        assert "first 5 of 12 matching" in page.text
        narrowed = client.get("/ui/fleet?partial=1&limit=5&q=cam-1")
        assert narrowed.text.count("<tr data-device=") == 2 and "matching" not in narrowed.text
    finally:
        client.close()


def test_the_simple_rollout_form_builds_a_spec(control_plane, api, tmp_path) -> None:
    for index, profile in enumerate(("x86-64-avx2", "x86-64-avx2", "rpi5-arm64")):
        assert api.post("/api/v1/devices", json={"id": f"cam-f{index}", "hardware_profile": profile}).status_code == 201
    release = make_release(control_plane, tmp_path)
    token = make_token(control_plane, Role.OPERATOR)
    client = _session(control_plane, token)
    try:
        response = client.post("/ui/rollouts", data={
            "csrf": _csrf(client, "/ui/rollouts"), "name": "form canary", "package_id": release.package_id,
            "hardware_profile": "x86-64-avx2", "stage_kind": "percent", "stages": "50, 100", "soak_s": "30",
            "require_approval": "on"})
        location = _flash(response)
        assert location.startswith("/ui/rollouts/ro-") and "rollout started" in location
        rollout_id = location.split("/ui/rollouts/")[1].split("?")[0]
    finally:
        client.close()
    spec = api.get(f"/api/v1/rollouts/{rollout_id}").json()["spec"]
    assert spec["name"] == "form canary"
    assert spec["target"]["hardware_profiles"] == ["x86-64-avx2"]
    assert [(s["percent"], s["require_approval"]) for s in spec["stages"]] == [(50, True), (100, False)]
    assert spec["soak_s"] == 30
    assert api.get(f"/api/v1/rollouts/{rollout_id}").json()["device_count"] == 2
