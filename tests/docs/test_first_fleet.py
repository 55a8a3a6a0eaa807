"""docs/first-fleet.md runs as written: one operator, one machine, embedded defaults, two cameras, a canary
rollout of a second build (cam-01 first, judged against cam-02 still on the first package, then cam-02), and a
drift alert on the camera whose scene changed and not on the other.

The walkthrough's blocks (info string ``bash walkthrough``) are one shell session, so they run
concatenated, in order, in one empty directory, with the environment of the runnable-blocks test
(tests/docs/test_runnable_blocks.py): the project's ``.venv`` first on PATH, no inherited
``EDGEFLEET_*`` setting, ``EDGEFLEET_API_PORT`` a free port. Real processes throughout: ``edgefleet
serve`` with its embedded broker, two ``edgefleet-agent`` processes enrolled with ``token enroll``
and reading videos from ``edgefleet data video``, a model trained and built by the CLI.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.docs.test_runnable_blocks import FENCE
from tests.support.services import free_port

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
WALKTHROUGH = REPO / "docs" / "first-fleet.md"
TIMEOUT_S = 600


def walkthrough_blocks(text: str) -> list[str]:
    return [m.group("body") for m in FENCE.finditer(text) if m.group("info").split() == ["bash", "walkthrough"]]


def test_the_walkthrough_is_linked_from_the_readme_and_has_every_step() -> None:
    assert "docs/first-fleet.md" in (REPO / "README.md").read_text()
    script = "".join(walkthrough_blocks(WALKTHROUGH.read_text()))
    for step in ("edgefleet data synth", "edgefleet train", "edgefleet build", "edgefleet serve",
                 "edgefleet data video", "--shift dark", "edgefleet token enroll", "edgefleet-agent run",
                 "edgefleet deployment create", "edgefleet rollout plan", "edgefleet rollout create",
                 "edgefleet rollout watch", "edgefleet drift alerts"):
        assert step in script, step
    # No gate is waved through: the quick-start settings must pass it.
    assert "--allow-unvalidated" not in script


# It trains and builds a model and runs a control plane and two agents: on a loaded 2-core machine it
# has taken four minutes, over the suite's 300 s default.
@pytest.mark.timeout(TIMEOUT_S + 60)
def test_first_fleet_walkthrough_ends_with_a_drift_alert_on_the_changed_camera_only(tmp_path: Path) -> None:
    script = tmp_path / "walkthrough.sh"
    script.write_text("".join(walkthrough_blocks(WALKTHROUGH.read_text())))
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
    env.update({"PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
                "EDGEFLEET_REPO": str(REPO), "EDGEFLEET_API_PORT": str(free_port()), "COLUMNS": "160"})
    workdir = tmp_path / "operator"
    workdir.mkdir()
    # A session of its own: the server and agents it starts in the background end with it.
    process = subprocess.Popen(["bash", "-euo", "pipefail", str(script)], cwd=workdir, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)

    def logs() -> str:
        parts = [f"--- {name} ---\n{(workdir / name).read_text(errors='replace')[-2500:]}"
                 for name in ("serve.log", "cam-01/agent.log", "cam-02/agent.log") if (workdir / name).exists()]
        return f"--- walkthrough output ---\n{output[-5000:]}\n" + "\n".join(parts)

    assert process.returncode == 0, logs()
    model = json.loads((workdir / "model.json").read_text())
    assert model["status"] == "validated" and model["accuracy"] >= 0.8, model
    build = json.loads((workdir / "build.json").read_text())
    assert build["package_id"] and any(n["target"] == "drift-reference" and n["status"] == "built"
                                       for n in build["notes"]), build["notes"]
    # The canary: a second package, cam-01 alone in stage 1, promoted on gates that had a live control group
    # (cam-02 on the first package), then cam-02; both end on the new package.
    second = json.loads((workdir / "build2.json").read_text())["package_id"]
    assert second and second != build["package_id"], second
    rollout = json.loads((workdir / "rollout.json").read_text())
    assert rollout["state"] == "completed", rollout["decisions"]
    devices = {d["device_id"]: d for d in json.loads((workdir / "rollout-devices.json").read_text())}
    assert {k: (d["stage"], d["state"], d["package_id"], d["previous_package_id"]) for k, d in devices.items()} == {
        "cam-01": (0, "succeeded", second, build["package_id"]),
        "cam-02": (1, "succeeded", second, build["package_id"])}, devices
    promoted = [d for d in rollout["decisions"] if d["action"] == "promote"]
    assert [d["stage"] for d in promoted] == [0], rollout["decisions"]
    (stratum,) = promoted[0]["numbers"]["strata"].values()
    assert stratum["control_source"] == "live" and stratum["canary"]["devices"] == 1, stratum
    gates = {g["gate"]: g["status"] for g in stratum["gates"]}
    assert {"install_failure_rate", "error_rate", "p95_latency_ratio", "mean_confidence",
            "class_distribution"} <= set(gates) and set(gates.values()) == {"pass"}, gates
    assert rollout["decisions"][-1]["action"] in ("complete", "completed"), rollout["decisions"]
    alerts = json.loads((workdir / "alerts.json").read_text())
    assert {a["device_id"] for a in alerts} == {"cam-02"}, logs()
    # The alert is about the light: a luma feature among the worst ones.
    features = {f["name"] for a in alerts for f in a["evidence"]["features"]}
    assert features & {"luma_mean", "luma_std", "clipped_fraction"}, features
    states = {row["device_id"]: row for row in json.loads((workdir / "drift-devices.json").read_text())}
    assert states["cam-01"]["state"] in ("ok", "baseline pending") and states["cam-01"]["open_alerts"] == 0, states
    assert states["cam-01"]["last_window_at"] is not None
