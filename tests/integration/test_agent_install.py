"""`pip install .[agent]` into a clean venv stays light and the agent runs there.

The import-linter contracts (run by `make test`) stop the agent *code* importing
cloud/torch/fastapi/sqlmodel; this test stops the agent *install* pulling them.
"""

from __future__ import annotations

import subprocess
import venv
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
FORBIDDEN = {"torch", "fastapi", "sqlmodel", "sqlalchemy", "uvicorn", "alembic", "amqtt", "typer"}


def test_agent_extra_installs_without_cloud_dependencies(tmp_path: Path) -> None:
    env_dir = tmp_path / "agent-venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", f"{REPO}[agent]"],
        capture_output=True, text=True, timeout=900,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    listing = subprocess.run([str(python), "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True,
                             check=True).stdout
    installed = {line.split("==")[0].lower().replace("_", "-") for line in listing.splitlines()}
    assert installed & FORBIDDEN == set(), f"the agent extra pulled {sorted(installed & FORBIDDEN)}"
    assert {"onnxruntime", "paho-mqtt", "opencv-python-headless"} <= installed
    # The agent really runs there: its whole import graph and its console script.
    smoke = subprocess.run(
        [str(python), "-c", "import agent.app, agent.cli, agent.runtime.onnx; print('ok')"],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert smoke.returncode == 0 and smoke.stdout.strip() == "ok", smoke.stderr[-3000:]
    version = subprocess.run([str(env_dir / "bin" / "edgefleet-agent"), "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.strip(), version.stderr
