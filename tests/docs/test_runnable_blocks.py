"""Every shell block marked runnable in README.md and docs/*.md runs as written.

Convention: a fenced block whose info string is ``bash runnable`` is run by this test;
plain ``bash`` blocks are examples that need real infrastructure (a fleet, a broker
on another host, systemd) and are not run. Runnable blocks must work offline on a
fresh checkout, in an empty directory, within a few minutes on two shared cores.
Blocks marked ``bash walkthrough`` (docs/first-fleet.md) are one shell session:
tests/docs/test_first_fleet.py runs them together, in order.

Each block runs with ``bash -euo pipefail`` in its own temporary directory, the
project's virtual environment first on PATH, no inherited ``EDGEFLEET_*`` settings,
``EDGEFLEET_REPO`` pointing at the checkout and ``EDGEFLEET_API_PORT`` at a free port.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.services import free_port

# Blocks start control planes and agents and train models.
pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(?P<info>[^\n`]*)\n(?P<body>.*?)^```\s*$", re.MULTILINE | re.DOTALL)
BLOCK_TIMEOUT_S = 240


@dataclass(frozen=True)
class Block:
    path: Path
    line: int
    body: str

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"


def runnable_blocks(text: str, path: Path) -> list[Block]:
    blocks = []
    for match in FENCE.finditer(text):
        words = match.group("info").split()
        if words[:1] == ["bash"] and "runnable" in words[1:]:
            blocks.append(Block(path, text.count("\n", 0, match.start()) + 1, match.group("body")))
    return blocks


ALL_BLOCKS = [block for document in DOCUMENTS for block in runnable_blocks(document.read_text(), document)]


def test_the_extractor_finds_only_marked_blocks(tmp_path: Path) -> None:
    sample = "```bash runnable\necho one\n```\n\n```bash\necho two\n```\n```python runnable\nx\n```\n"
    blocks = runnable_blocks(sample, tmp_path / "x.md")
    assert [(b.line, b.body) for b in blocks] == [(1, "echo one\n")]


def test_the_docs_have_runnable_blocks() -> None:
    names = {b.path.name for b in ALL_BLOCKS}
    # The quickstart's own commands (make demo / make test) are not run here: one is the
    # whole demo and the other is this very suite.
    assert {"README.md", "operations.md", "agent-install.md"} <= names, names
    assert len(ALL_BLOCKS) >= 3


@pytest.mark.parametrize("block", ALL_BLOCKS, ids=[b.name for b in ALL_BLOCKS])
def test_runnable_block_runs_as_written(block: Block, tmp_path: Path) -> None:
    script = tmp_path / "block.sh"
    script.write_text(block.body)
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
    env.update({
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        "EDGEFLEET_REPO": str(REPO),
        "EDGEFLEET_API_PORT": str(free_port()),
        "COLUMNS": "160",
    })
    # A session of its own, so a block's background server dies with it even on a timeout.
    process = subprocess.Popen(["bash", "-euo", "pipefail", str(script)], cwd=tmp_path, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=BLOCK_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"{block.name} did not finish within {BLOCK_TIMEOUT_S}s:\n{stdout[-3000:]}\n{stderr[-3000:]}")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
    assert process.returncode == 0, (
        f"{block.name} exited {process.returncode}\n--- block ---\n{block.body}\n--- stdout ---\n"
        f"{stdout[-3000:]}\n--- stderr ---\n{stderr[-3000:]}")
