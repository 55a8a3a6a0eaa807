"""Operator commands on one machine: drift references that can be re-run, and token commands that reach the server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cloud.cli import app
from cloud.core.config import Settings
from cloud.core.db import make_engine, migrate
from cloud.pipeline.data.synth import write_synthetic_dataset
from cloud.pipeline.quickstart import register_and_package
from tests.drift.simdevice import colour_model

LABELS = ["circle", "cross", "square", "triangle"]


def _clean_env(**extra: str) -> dict[str, str]:
    # CliRunner merges its env into os.environ: blank out every EDGEFLEET_ setting the test does not set.
    env: dict[str, str | None] = {key: None for key in os.environ if key.startswith("EDGEFLEET_")}
    env.update({"COLUMNS": "200", "TERM": "dumb", **extra})
    return env  # type: ignore[return-value]


def test_drift_reference_can_run_twice_and_never_rewrites_a_package(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    settings = Settings(data_dir=data_dir)
    migrate(settings.resolved_database_url)
    engine = make_engine(settings.resolved_database_url)
    onnx = colour_model(tmp_path / "model.onnx", len(LABELS))
    published = register_and_package(engine, onnx_path=onnx, labels=LABELS, model_name="shapes",
                                     dataset_id="ds-test", packages_dir=settings.packages_dir,
                                     hardware_profiles=["x86-64-avx2"])
    engine.dispose()
    images = write_synthetic_dataset(tmp_path / "images", images_per_class=20, size=64, seed=3)
    runner = CliRunner()
    env = _clean_env(EDGEFLEET_DATA_DIR=str(data_dir))
    args = ["drift", "reference", published.package_id, "--data", str(images), "--split", "all",
            "--window-frames", "20"]

    first = runner.invoke(app, args, env=env)
    assert first.exit_code == 0, first.output
    new_dirs = [p for p in settings.packages_dir.iterdir() if p.is_dir() and p.name != published.package_id
                and not p.name.startswith(".")]
    assert len(new_dirs) == 1, new_dirs
    manifest = new_dirs[0] / "manifest.json"
    before = {p.name: p.read_bytes() for p in new_dirs[0].iterdir()}
    before_mtime = manifest.stat().st_mtime_ns

    second = runner.invoke(app, args, env=env)
    assert second.exit_code == 0, second.output
    assert new_dirs[0].name in second.output
    after = {p.name: p.read_bytes() for p in new_dirs[0].iterdir()}
    assert after == before
    assert manifest.stat().st_mtime_ns == before_mtime
    assert [p.name for p in settings.packages_dir.iterdir() if p.is_dir() and not p.name.startswith(".")
            ].count(new_dirs[0].name) == 1
    assert len([p for p in settings.packages_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]) == 2


@pytest.fixture
def no_local_store_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


@pytest.mark.integration
def test_token_enroll_with_a_server_makes_the_token_there_and_no_local_store(
        control_plane, api, no_local_store_cwd: Path, tmp_path: Path) -> None:
    import shlex
    import subprocess
    import sys

    from agent.config import AgentConfig
    from tests.conftest import control_plane_admin_headers

    admin = control_plane_admin_headers(control_plane)["Authorization"].removeprefix("Bearer ")
    runner = CliRunner()
    result = runner.invoke(app, ["token", "enroll", "cam-via-api"],
                           env=_clean_env(EDGEFLEET_SERVER=control_plane.base_url, EDGEFLEET_TOKEN=admin))
    assert result.exit_code == 0, result.output
    assert not (no_local_store_cwd / ".edgefleet").exists()
    command = next(line for line in result.stdout.splitlines() if line.startswith("edgefleet-agent enroll"))
    words = shlex.split(command)
    assert words[words.index("--server") + 1] == control_plane.base_url
    token = words[words.index("--token") + 1]
    config_path = tmp_path / "device" / "agent.yaml"
    config_path.parent.mkdir()
    enrolled = subprocess.run([sys.executable, "-m", "agent", "enroll", "--server", control_plane.base_url,
                               "--token", token, "--config", str(config_path)],
                              capture_output=True, text=True, timeout=60)
    assert enrolled.returncode == 0, enrolled.stderr
    assert AgentConfig.load(config_path, env={}).device_id == "cam-via-api"
    assert api.get("/api/v1/devices/cam-via-api").status_code == 200


def test_local_commands_refuse_to_invent_a_data_directory(no_local_store_cwd: Path) -> None:
    runner = CliRunner()
    for args in (["token", "enroll", "cam-1"], ["token", "create", "--name", "ops"], ["keys", "status"]):
        result = runner.invoke(app, args, env=_clean_env())
        assert result.exit_code == 2, (args, result.output)
        assert "EDGEFLEET_DATA_DIR" in result.output and "--data-dir" in result.output
        assert not (no_local_store_cwd / ".edgefleet").exists()
    given = runner.invoke(app, ["--data-dir", str(no_local_store_cwd / "plane"), "token", "create", "--name", "ops"],
                          env=_clean_env())
    assert given.exit_code == 0, given.output
    assert (no_local_store_cwd / "plane" / "edgefleet.db").exists() and not (no_local_store_cwd / ".edgefleet").exists()
