"""The key-management and enrollment command lines, as an operator runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent.config import AgentConfig


def test_keys_tokens_and_broker_config_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cloud.cli import app

    monkeypatch.setenv("EDGEFLEET_DATA_DIR", str(tmp_path / "cloud"))
    monkeypatch.setenv("EDGEFLEET_ENVIRONMENT", "development")
    runner = CliRunner()
    assert runner.invoke(app, ["keys", "init"]).exit_code == 0
    created = runner.invoke(app, ["token", "create", "--name", "ops", "--role", "admin"])
    assert created.exit_code == 0 and created.output.strip().startswith("efo_")
    rotated = runner.invoke(app, ["keys", "rotate", "root", "--keys", "3", "--threshold", "2"])
    assert rotated.exit_code == 0 and "version 2" in rotated.output
    status = runner.invoke(app, ["keys", "status", "--json"])
    assert status.exit_code == 0, status.output
    document = json.loads(status.output)
    assert document["tuf_root_version"] == 2 and document["tuf_roles"]["root"] == {"keys": 3, "threshold": 2}
    table = runner.invoke(app, ["keys", "status"])
    assert table.exit_code == 0 and "TUF root version 2" in table.output and "root" in table.output
    assert runner.invoke(app, ["keys", "rotate", "nonsense"]).exit_code == 2
    out = tmp_path / "mosquitto"
    configured = runner.invoke(app, ["broker-config", "--out", str(out), "--port", "18883"])
    assert configured.exit_code == 0 and "EDGEFLEET_MQTT_CERT_FILE" in configured.output
    config = (out / "mosquitto.conf").read_text()
    for line in ("require_certificate true", "use_identity_as_username true", "crlfile ", "acl_file "):
        assert line in config
    assert "pattern read ef/v1/%u/commands" in (out / "acl").read_text()
    assert (out / "server.key").stat().st_mode & 0o077 == 0


@pytest.mark.integration
def test_agent_enroll_command_writes_a_loadable_config(control_plane, api, tmp_path: Path) -> None:
    token = api.post("/api/v1/enrollment-tokens", json={"device_id": "cam-cli"}).json()["token"]
    config_path = tmp_path / "device" / "agent.yaml"
    config_path.parent.mkdir()
    config_path.write_text("source: synthetic:1\n")  # settings already there are kept
    result = subprocess.run([sys.executable, "-m", "agent", "enroll", "--server", control_plane.base_url,
                             "--token", token, "--config", str(config_path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    config = AgentConfig.load(config_path, env={})
    assert config.device_id == "cam-cli" and config.source == "synthetic:1"
    assert config.tuf_root_file and config.tuf_root_file.exists()
    assert config.director_key_file and config.director_key_file.exists()
    again = subprocess.run([sys.executable, "-m", "agent", "enroll", "--server", control_plane.base_url,
                            "--token", token, "--config", str(config_path)], capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and "already used" in again.stderr
