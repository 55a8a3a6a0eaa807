"""What a newcomer tripped over: serve's address, truncated tables, empty listings that say nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from cloud.cli import app
from tests.support.services import free_port, wait_for

pytestmark = pytest.mark.integration

LONG_ID = "pet-park-north-gate-camera-0001"
PROFILE = "x86-64-avx512-vnni"


def _run(args: list[str], *, columns: int = 80) -> tuple[int, str, str]:
    runner = CliRunner()
    result = runner.invoke(app, args, env={"COLUMNS": str(columns), "TERM": "dumb"})
    return result.exit_code, result.stdout, result.stderr


def _words(text: str) -> str:
    """``text`` with the terminal's line wrapping undone."""
    return " ".join(text.split())


def test_serve_listens_where_its_options_say(tmp_path: Path) -> None:
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("EDGEFLEET_")}
    env.update({"EDGEFLEET_DATA_DIR": str(tmp_path / "data"), "EDGEFLEET_API_PORT": "1"})  # the option must win
    process = subprocess.Popen([sys.executable, "-c", "from cloud.cli import main; main()", "serve", "--host",
                                "127.0.0.1", "--port", str(port), "--log-level", "WARNING"],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        def healthy() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(lambda: healthy() or process.poll() is not None, 60, what=f"serve --port {port} answering")
        assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
        assert healthy()
    finally:
        process.terminate()
        process.wait(timeout=20)


def test_listings_wrap_long_values_in_an_80_column_terminal(control_plane, api) -> None:
    assert api.post("/api/v1/devices", json={"id": LONG_ID, "hardware_profile": PROFILE}).status_code == 201
    token = api.headers["Authorization"].split()[1]
    code, out, _ = _run(["device", "list", "--server", control_plane.base_url, "--token", token])
    assert code == 0, out
    assert max(len(line) for line in out.splitlines()) <= 80
    # Folded, not cut: each cell's lines put together give the whole id and profile, no "…".
    assert "…" not in out
    columns: dict[int, str] = {}
    for line in out.splitlines():
        if line.startswith("│"):
            for index, piece in enumerate(line.strip("│").split("│")):
                columns[index] = columns.get(index, "") + piece.strip()
    assert columns[0] == LONG_ID and columns[2] == PROFILE, columns


def test_empty_listings_say_what_to_do_next(control_plane, api, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    token = api.headers["Authorization"].split()[1]
    server = ["--server", control_plane.base_url, "--token", token]
    code, out, err = _run(["device", "list", *server])
    assert code == 0 and out.strip() == ""
    assert "edgefleet token enroll" in _words(err)
    code, out, _ = _run(["device", "list", *server, "--json"])
    assert code == 0 and out.strip() == "[]"
    code, out, err = _run(["rollout", "list", *server])
    assert code == 0 and "edgefleet rollout create" in _words(err)
    # The model registry is local: an empty data directory.
    monkeypatch.setenv("EDGEFLEET_DATA_DIR", str(tmp_path / "fresh"))
    code, out, err = _run(["model", "list"])
    assert code == 0 and "edgefleet train" in _words(out + err) and "edgefleet model import" in _words(out + err)
    code, out, _ = _run(["model", "list", "--json"])
    assert code == 0 and out.strip() == "[]"
