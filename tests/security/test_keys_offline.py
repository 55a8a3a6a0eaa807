"""Production refuses weak settings; root and targets keys can live off the host.

The control plane is started as the real `edgefleet serve` process for the
settings checks; the offline-key flow runs the real `edgefleet keys` commands and
ends with a real agent installing a package whose targets were signed offline.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from cloud.cli import app
from cloud.core.config import Settings
from cloud.core.db import make_engine
from cloud.security import FleetSecurity
from cloud.server import ControlPlane
from tests.conftest import control_plane_admin_headers
from tests.support.fleet import publish_model, start_agent, stop_agents
from tests.support.services import free_port, wait_for

pytestmark = pytest.mark.integration

EDGEFLEET = str(Path(sys.executable).with_name("edgefleet"))


def _serve(tmp_path: Path, **env: str) -> subprocess.Popen[str]:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("EDGEFLEET_")}
    environment.update({"EDGEFLEET_ENVIRONMENT": "production", "EDGEFLEET_DATA_DIR": str(tmp_path / "cloud"),
                        "EDGEFLEET_API_PORT": str(free_port()), **env})
    return subprocess.Popen([EDGEFLEET, "serve"], env=environment, cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _finish(process: subprocess.Popen[str]) -> str:
    output, _ = process.communicate(timeout=120)
    return output


def test_production_refuses_weak_settings_unless_each_is_accepted_by_name(tmp_path: Path) -> None:
    refused = _serve(tmp_path, EDGEFLEET_TUF_ROOT_KEYS="1", EDGEFLEET_TUF_ROOT_THRESHOLD="1",
                     EDGEFLEET_PUBLIC_URL="http://fleet.example.com")
    output = _finish(refused)
    assert refused.returncode != 0, output
    for name in ("[sqlite]", "[embedded-broker]", "[http-public-url]", "[single-root-key]"):
        assert name in output, f"{name} not named in: {output[-2000:]}"

    plain = _finish(_serve(tmp_path, EDGEFLEET_MQTT_URL="mqtt://127.0.0.1:1883",
                           EDGEFLEET_DATABASE_URL="postgresql+psycopg://nobody@127.0.0.1/none"))
    assert "[plain-mqtt]" in plain and "[sqlite]" not in plain

    # Everything accepted by name: it starts, and says INSECURE for each, loudly, at WARNING.
    accepted = _serve(tmp_path, EDGEFLEET_TUF_ROOT_KEYS="1", EDGEFLEET_TUF_ROOT_THRESHOLD="1",
                      EDGEFLEET_ACCEPT_WEAK_SECURITY="sqlite,embedded-broker,http-public-url,single-root-key,"
                                                     "online-root-keys")
    lines: list[str] = []
    try:
        assert accepted.stdout is not None
        for line in accepted.stdout:
            lines.append(line)
            if "Uvicorn running" in line or "Application startup complete" in line or len(lines) > 400:
                break
    finally:
        accepted.terminate()
        accepted.wait(timeout=30)
    insecure = [line for line in lines if "INSECURE" in line and "WARNING" in line]
    assert len(insecure) == 5, "".join(lines[-40:])


def test_root_keys_left_on_the_host_are_refused_until_moved_offline(tmp_path: Path) -> None:
    accept = "sqlite,embedded-broker,http-public-url"
    first = _finish(_serve(tmp_path, EDGEFLEET_ACCEPT_WEAK_SECURITY=accept))
    assert "[online-root-keys]" in first, first[-2000:]

    env = {"EDGEFLEET_DATA_DIR": str(tmp_path / "cloud"), "EDGEFLEET_ENVIRONMENT": "development"}
    moved = CliRunner().invoke(app, ["keys", "offline", "--to", str(tmp_path / "usb")], env=env)
    assert moved.exit_code == 0, moved.output
    online = list((tmp_path / "cloud" / "security" / "tuf" / "keys").glob("*.pem"))
    assert len(online) == 2 and len(list((tmp_path / "usb").glob("*.pem"))) == 4  # 3 root + targets

    started = _serve(tmp_path, EDGEFLEET_ACCEPT_WEAK_SECURITY=accept)
    try:
        assert started.stdout is not None
        seen = ""
        for line in started.stdout:
            seen += line
            if "Uvicorn running" in line or "Application startup complete" in line:
                break
        assert "online-root-keys" not in seen and started.poll() is None, seen[-2000:]
    finally:
        started.terminate()
        started.wait(timeout=30)


@pytest.fixture
def offline_plane(tmp_path: Path, mqtt_url: str, database_url: str, topic_prefix: str) -> Any:
    settings = Settings(data_dir=tmp_path / "cloud", database_url=database_url, mqtt_url=mqtt_url,
                        topic_prefix=topic_prefix, api_port=0)
    # The key ceremony: root and targets keys are made on the medium, never on the host.
    from cloud.core.db import migrate

    migrate(settings.resolved_database_url)
    FleetSecurity(settings, make_engine(settings.resolved_database_url), offline_keys_dir=tmp_path / "usb").initialise()
    plane = ControlPlane(settings)
    plane.start()
    plane.serve_http_in_thread()
    yield plane
    plane.stop()


def test_a_release_signed_where_the_offline_keys_are_installs_on_a_device(
        offline_plane: ControlPlane, trained_model: Any, tmp_path: Path) -> None:
    plane = offline_plane
    assert plane.security.tuf.online_offline_role_keys() == []
    release = publish_model(plane, trained_model)
    env = {"EDGEFLEET_DATA_DIR": str(plane.settings.data_dir), "EDGEFLEET_DATABASE_URL": plane.settings.resolved_database_url}
    runner = CliRunner()
    with httpx.Client(base_url=plane.base_url, timeout=30, headers=control_plane_admin_headers(plane)) as api:
        agent = start_agent(plane, tmp_path, "cam-offline")
        try:
            wait_for(lambda: api.get("/api/v1/devices/cam-offline").json()["online"], 60, what="agent online")
            waiting = api.post("/api/v1/deployments", json={"package_id": release.package_id, "device_ids": ["cam-offline"]})
            assert waiting.status_code == 409 and "sign-targets" in waiting.json()["detail"], waiting.text

            # Carried to the key machine and back: export, sign (no control plane there), import.
            carry = tmp_path / "carry"
            assert runner.invoke(app, ["keys", "export-targets", str(carry)], env=env).exit_code == 0
            online_only = runner.invoke(app, ["keys", "sign", str(carry), "--keys",
                                              str(plane.settings.security_dir / "tuf" / "keys")], env=env)
            assert online_only.exit_code == 2, "the online keys alone signed the targets"
            signed = runner.invoke(app, ["keys", "sign", str(carry), "--keys", str(tmp_path / "usb")], env=env)
            assert signed.exit_code == 0, signed.output
            imported = runner.invoke(app, ["keys", "import-targets", str(carry / "targets.signed.json")], env=env)
            assert imported.exit_code == 0, imported.output

            response = api.post("/api/v1/deployments", json={"package_id": release.package_id, "device_ids": ["cam-offline"]})
            assert response.status_code == 201, response.text
            deployment_id = response.json()["id"]
            wait_for(lambda: api.get(f"/api/v1/deployments/{deployment_id}").json()["state"] == "succeeded", 120,
                     what="the offline-signed package to install")
        finally:
            stop_agents([agent])
