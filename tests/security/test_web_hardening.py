"""Dashboard login and web hardening against a running control plane: CSRF on login, throttling,
server-side sessions, API token expiry, security headers, and weights-only checkpoint loading."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlmodel import Session, select

from cloud.security.tables import ApiToken, Role
from cloud.security.tokens import create_api_token

pytestmark = pytest.mark.integration

CSRF_FIELD = re.compile(r'name="csrf" value="([^"]+)"')


def _browser(plane) -> httpx.Client:
    return httpx.Client(base_url=plane.base_url, timeout=15, follow_redirects=False)


def _token(plane, role: Role = Role.OPERATOR, *, ttl_s: int | None = None) -> str:
    with Session(plane.engine) as session:
        secret, _ = create_api_token(session, name=f"web {role.value}", role=role, ttl_s=ttl_s)
    return secret


def _login_form(browser: httpx.Client) -> str:
    page = browser.get("/ui/login")
    assert page.status_code == 200
    found = CSRF_FIELD.search(page.text)
    assert found, "the login form carries no CSRF value"
    return found.group(1)


def _log_in(browser: httpx.Client, token: str) -> httpx.Response:
    csrf = _login_form(browser)
    return browser.post("/ui/login", data={"token": token, "next": "/ui/fleet", "csrf": csrf})


def test_login_without_the_forms_csrf_value_is_refused(control_plane) -> None:
    token = _token(control_plane)
    with _browser(control_plane) as browser:
        _login_form(browser)
        forged = browser.post("/ui/login", data={"token": token, "next": "/ui/fleet"})
        assert forged.status_code == 400 and "edgefleet_session" not in forged.cookies
        other = browser.post("/ui/login", data={"token": token, "next": "/ui/fleet", "csrf": "x" * 32})
        assert other.status_code == 400
        assert _log_in(browser, token).status_code == 303


def test_failed_logins_are_throttled_per_client_and_per_token_prefix(control_plane) -> None:
    limit = control_plane.settings.login_failures_per_minute
    good = _token(control_plane)
    with _browser(control_plane) as browser:
        for attempt in range(limit):
            wrong = _log_in(browser, f"efo_wrong-guess-{attempt}")
            assert wrong.status_code == 401, wrong.text
        blocked = _log_in(browser, "efo_wrong-guess-next")
        assert blocked.status_code == 429
        assert int(blocked.headers["retry-after"]) > 0
        # While blocked, even the right token waits: guessing cannot continue by luck.
        assert _log_in(browser, good).status_code == 429


def test_guessing_one_token_prefix_is_throttled_across_addresses(control_plane) -> None:
    # uvicorn takes the client address from X-Forwarded-For when the peer is a local proxy,
    # as here: each attempt comes from another address, all guessing behind one token prefix.
    prefix = "efo_SAMEPREFIX"
    for address in range(control_plane.settings.login_failures_per_minute):
        with _browser(control_plane) as browser:
            browser.headers["x-forwarded-for"] = f"10.0.0.{address + 1}"
            assert _log_in(browser, f"{prefix}-guess-{address}").status_code == 401
    with _browser(control_plane) as browser:
        browser.headers["x-forwarded-for"] = "10.9.9.9"
        assert _log_in(browser, f"{prefix}-guess-next").status_code == 429
        # The same fresh address with another prefix is not held back.
        assert _log_in(browser, "efo_OTHERPREFIX-guess").status_code == 401


def test_the_dashboard_cookie_is_a_session_id_not_the_token_and_dies_with_the_token(control_plane, api) -> None:
    from cloud.security.tables import DashboardSession

    token = _token(control_plane)
    with _browser(control_plane) as browser:
        assert _log_in(browser, token).status_code == 303
        cookie = browser.cookies.get("edgefleet_session")
        assert cookie and cookie != token and token not in cookie
        with Session(control_plane.engine) as session:
            stored = session.exec(select(DashboardSession)).all()
            token_row = session.exec(select(ApiToken).where(ApiToken.name == "web operator")).one()
        assert len(stored) == 1 and stored[0].token_id == token_row.id and cookie not in stored[0].id_sha256
        assert browser.get("/ui/fleet").status_code == 200
        # Revoking the token ends the session on the next request.
        assert api.delete(f"/api/v1/tokens/{token_row.id}").status_code == 204
        after = browser.get("/ui/fleet")
        assert after.status_code == 303 and after.headers["location"].startswith("/ui/login")


def test_logout_ends_the_session_server_side(control_plane) -> None:
    token = _token(control_plane)
    with _browser(control_plane) as browser:
        assert _log_in(browser, token).status_code == 303
        cookie = browser.cookies.get("edgefleet_session")
        page = browser.get("/ui/fleet")
        csrf = CSRF_FIELD.search(page.text)
        assert csrf
        assert browser.post("/ui/logout", data={"csrf": csrf.group(1)}).status_code == 303
    with _browser(control_plane) as replay:
        replay.cookies.set("edgefleet_session", str(cookie), path="/ui")
        assert replay.get("/ui/fleet").status_code == 303


def test_api_tokens_expire(control_plane, api) -> None:
    created = api.post("/api/v1/tokens", json={"name": "short", "role": "viewer", "ttl_s": 3600})
    assert created.status_code == 201, created.text
    expires_at = datetime.fromisoformat(created.json()["expires_at"])
    assert timedelta(minutes=59) < expires_at - datetime.now(UTC) <= timedelta(hours=1)
    default = api.post("/api/v1/tokens", json={"name": "default", "role": "viewer"}).json()
    assert datetime.fromisoformat(default["expires_at"]) - datetime.now(UTC) > timedelta(days=89)
    token = created.json()["token"]
    headers = {"Authorization": f"Bearer {token}"}
    assert httpx.get(f"{control_plane.base_url}/api/v1/devices", headers=headers).status_code == 200
    with Session(control_plane.engine) as session:
        row = session.get(ApiToken, created.json()["id"])
        assert row is not None
        row.expires_at = datetime.now(UTC) - timedelta(seconds=1)
        session.add(row)
        session.commit()
    expired = httpx.get(f"{control_plane.base_url}/api/v1/devices", headers=headers)
    assert expired.status_code == 401
    assert "expired" in expired.json()["detail"] and "edgefleet token create" in expired.json()["detail"]
    with _browser(control_plane) as browser:
        refused = _log_in(browser, token)
        assert refused.status_code == 401 and "expired" in refused.text


def test_every_response_carries_security_headers(control_plane, api) -> None:
    with _browser(control_plane) as browser:
        answers = [browser.get("/ui/login"), browser.get("/api/v1/health"), browser.get("/api/v1/devices"),
                   browser.get("/ui/static/dashboard.css"), browser.get("/metrics"),
                   browser.post("/api/v1/enroll", content=b"x" * (2 * 1024 * 1024))]
    for answer in answers:
        policy = answer.headers.get("content-security-policy", "")
        assert "frame-ancestors 'none'" in policy and "script-src 'self'" in policy, answer.url
        assert "unsafe-inline" not in policy
        assert answer.headers.get("x-frame-options") == "DENY"
        assert answer.headers.get("x-content-type-options") == "nosniff"
        assert answer.headers.get("referrer-policy") == "no-referrer"


def test_checkpoints_are_loaded_weights_only(tmp_path: Path) -> None:
    import torch

    from cloud.pipeline.service import _load_torch_model

    class Payload:
        def __reduce__(self):  # unpickling would run this: weights-only loading must refuse it
            return (Path(tmp_path / "pwned").touch, ())

    torch.save({"config": {}, "num_classes": 2, "state_dict": {}, "extra": Payload()}, tmp_path / "model.pt")
    with pytest.raises(Exception, match=r"[Ww]eights only"):
        _load_torch_model(tmp_path, ["a", "b"])
    assert not (tmp_path / "pwned").exists()


def test_cli_tokens_expire_after_ttl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from cloud.cli import app
    from cloud.core.config import Settings
    from cloud.core.db import make_engine

    monkeypatch.setenv("EDGEFLEET_DATA_DIR", str(tmp_path / "cloud"))
    monkeypatch.setenv("EDGEFLEET_ENVIRONMENT", "development")
    runner = CliRunner()
    short = runner.invoke(app, ["token", "create", "--name", "short", "--role", "operator", "--ttl", "60"])
    default = runner.invoke(app, ["token", "create", "--name", "default", "--role", "viewer"])
    assert short.exit_code == 0 and default.exit_code == 0, short.output + default.output
    with Session(make_engine(Settings().resolved_database_url)) as session:
        rows = {row.name: row for row in session.exec(select(ApiToken))}
    now = datetime.now(UTC)
    short_left = rows["short"].expires_at
    default_left = rows["default"].expires_at
    assert short_left is not None and default_left is not None
    aware = [m if m.tzinfo else m.replace(tzinfo=UTC) for m in (short_left, default_left)]
    assert timedelta(0) < aware[0] - now <= timedelta(seconds=60)
    assert aware[1] - now > timedelta(days=89)
