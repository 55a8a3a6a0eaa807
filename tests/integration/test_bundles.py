"""Air-gapped updates: a signed bundle carried to a device that cannot reach the broker.

One real agent process enrolled with a real control plane (PostgreSQL, Mosquitto), pointed
at a broker port where nothing listens yet. A bundle exported with ``edgefleet bundle
export`` installs through ``edgefleet-agent install-bundle`` while the agent runs offline;
expired, tampered, foreign, misaddressed and downgrade bundles are refused with the
reason and the model keeps running; when the broker becomes reachable the buffered job
reports reach the control plane. Last, with the agent stopped, install-bundle runs the
agent itself for the install.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session
from typer.testing import CliRunner

from agent.cli import main as agent_main
from agent.contract import DeployCommand
from cloud.cli import app as cloud_cli
from cloud.fleet.bundle import export_bundle, write_bundle
from cloud.fleet.tables import Device, DeviceJob
from cloud.security.director import DirectorKey
from cloud.security.tuf_repo import TufRepository
from tests.support.fleet import TEST_PROFILE, publish_model, start_agent
from tests.support.relay import TcpRelay
from tests.support.services import free_port, wait_for

pytestmark = pytest.mark.integration

OFFLINE_AGENT = {
    "telemetry_interval_s": 0.5, "reconnect_min_s": 0.2, "reconnect_max_s": 1.0,
    # Never ask the API where the broker is: the device is meant to stay cut off until the relay opens.
    "broker_resolve_after_failures": 1_000_000,
    "probation_window_s": 1.0, "probation_min_frames": 5, "runtime_timing_runs": 3,
    # Probation's latency check compares against a baseline of a few milliseconds; on a machine
    # shared with a parallel test worker that ratio says nothing about bundles.
    "probation_max_p95_latency_ratio": 1000.0,
}


def _active_package(state_dir: Path) -> str | None:
    document = json.loads((state_dir / "pipelines" / "main" / "update.json").read_text())
    slot = document.get("active_slot")
    return document["slots"][slot]["package_id"] if slot else None


def _install(bundle: Path, config: Path, wait_s: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", "install-bundle", str(bundle), "--config", str(config),
                           "--wait-s", str(wait_s)], capture_output=True, text=True, timeout=wait_s + 60)


def _refused(bundle: Path, config: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """Run install-bundle in this process (a refusal never reaches the agent) and return its error."""
    capsys.readouterr()
    assert agent_main(["install-bundle", str(bundle), "--config", str(config), "--wait-s", "5"]) == 1
    return capsys.readouterr().err


def _job(plane: Any, job_id: str) -> DeviceJob:
    with Session(plane.engine) as session:
        job = session.get(DeviceJob, job_id)
        assert job is not None
        return job


def test_bundle_installs_offline_refusals_keep_the_model_and_reports_arrive_later(
        control_plane: Any, trained_model: Any, database_url: str, tmp_path: Path, mqtt_url: str,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    plane = control_plane
    old = publish_model(plane, trained_model)
    new = publish_model(plane, trained_model)
    relay_port = free_port()
    agent = start_agent(plane, tmp_path, "cam-airgap", extra={**OFFLINE_AGENT,
                                                              "mqtt_url": f"mqtt://127.0.0.1:{relay_port}"})
    config = agent.state_dir / "agent.yaml"
    with Session(plane.engine) as session:
        session.add(Device(id="cam-elsewhere", hardware_profile=TEST_PROFILE))
        session.commit()
    monkeypatch.setenv("EDGEFLEET_DATA_DIR", str(plane.settings.data_dir))
    monkeypatch.setenv("EDGEFLEET_DATABASE_URL", database_url)
    cli = CliRunner()
    relay: TcpRelay | None = None
    try:
        # Exported for a hardware profile, as a tar archive: both devices of the profile get a job.
        exported = cli.invoke(cloud_cli, ["bundle", "export", new.package_id, "--profile", TEST_PROFILE,
                                          "--expires", "30d", "--out", str(tmp_path / "new.tar"), "--json"])
        assert exported.exit_code == 0, exported.output
        jobs = json.loads(exported.stdout)["jobs"]
        assert set(jobs) == {"cam-airgap", "cam-elsewhere"}
        with tarfile.open(tmp_path / "new.tar") as archive:
            names = archive.getnames()
        assert {"bundle.json", "metadata/timestamp.json", "metadata/1.root.json",
                "commands/cam-airgap.json"} <= set(names)
        assert any(n.startswith(f"targets/{new.package_id}/") and n.endswith(".model.onnx") for n in names)

        # The agent has never reached a broker: the install happens with what the bundle carries.
        # Its outbox is made after it took the state lock: from then on install-bundle hands over
        # to it rather than running an agent of its own.
        wait_for(lambda: (agent.state_dir / "outbox.sqlite").exists(), 60, what="the agent holding its state lock")
        installed = _install(tmp_path / "new.tar", config)
        assert installed.returncode == 0, installed.stdout + installed.stderr + agent.log[-3000:]
        assert "succeeded" in installed.stdout
        assert _active_package(agent.state_dir) == new.package_id
        assert agent.process.poll() is None
        assert _job(plane, jobs["cam-airgap"]).state == "queued"  # nothing has reached the control plane yet

        # Refusals: each names its reason; the running model is untouched.
        bad_usage = cli.invoke(cloud_cli, ["bundle", "export", new.package_id, "--device", "cam-airgap",
                                           "--expires", "0d", "--out", str(tmp_path / "x")])
        assert bad_usage.exit_code == 2 and "positive duration" in bad_usage.output

        with Session(plane.engine) as session:
            expired = export_bundle(plane.security, session, new.package_id, out=tmp_path / "expired",
                                    device_ids=["cam-airgap"], expires_in_s=86_400,
                                    now=datetime.now(UTC) - timedelta(days=2))
        assert "expired_metadata" in _refused(expired.path, config, capsys)

        with Session(plane.engine) as session:
            genuine = export_bundle(plane.security, session, new.package_id, out=tmp_path / "genuine",
                                    device_ids=["cam-airgap"], expires_in_s=3600)
            downgrade = export_bundle(plane.security, session, old.package_id, out=tmp_path / "old",
                                      device_ids=["cam-airgap"], expires_in_s=3600)
            elsewhere = export_bundle(plane.security, session, new.package_id, out=tmp_path / "elsewhere",
                                      device_ids=["cam-elsewhere"], expires_in_s=3600)
        assert "package_downgrade" in _refused(downgrade.path, config, capsys)
        assert "bundle_not_for_device" in _refused(elsewhere.path, config, capsys)

        tampered_package = tmp_path / "tampered-package"
        subprocess.run(["cp", "-r", str(genuine.path), str(tampered_package)], check=True)
        model_file = next((tampered_package / "targets" / new.package_id).glob("*.model.onnx"))
        data = bytearray(model_file.read_bytes())
        data[len(data) // 2] ^= 0xFF
        model_file.write_bytes(bytes(data))
        assert "digest_mismatch" in _refused(tampered_package, config, capsys)

        tampered_metadata = tmp_path / "tampered-metadata"
        subprocess.run(["cp", "-r", str(genuine.path), str(tampered_metadata)], check=True)
        targets_file = next((tampered_metadata / "metadata").glob("*.targets.json"))
        targets = json.loads(targets_file.read_text())
        for target in targets["signed"]["targets"].values():
            target["length"] += 1
        targets_file.write_text(json.dumps(targets))
        assert "bad_signature" in _refused(tampered_metadata, config, capsys)

        # Signed by another control plane's keys: its root chain and its director mean nothing here.
        foreign_director = DirectorKey(tmp_path / "foreign" / "director" / "director.pem")
        foreign_director.initialise()
        foreign_repo = TufRepository(tmp_path / "foreign" / "tuf")
        foreign_repo.initialise(director_public_pem=foreign_director.public_pem())
        foreign_repo.add_package(plane.settings.packages_dir / new.package_id)
        genuine_command = DeployCommand.model_validate_json(
            (genuine.path / "commands" / "cam-airgap.json").read_bytes())
        forged = foreign_director.sign(genuine_command.model_copy(update={"job_id": "job-forged"}))
        info = json.loads((genuine.path / "bundle.json").read_text())
        foreign = write_bundle(tmp_path / "foreign.tar", info=info,
                               metadata=foreign_repo.bundle_metadata(datetime.now(UTC) + timedelta(days=1)),
                               target_files=foreign_repo.package_target_files(new.package_id),
                               package_id=new.package_id, commands=[forged])
        assert "bad_signature" in _refused(foreign, config, capsys)
        # Genuine TUF metadata, but the command signed by a foreign director.
        foreign_command = tmp_path / "foreign-director"
        subprocess.run(["cp", "-r", str(genuine.path), str(foreign_command)], check=True)
        (foreign_command / "commands" / "cam-airgap.json").write_bytes(forged.to_bytes())
        refusal = _refused(foreign_command, config, capsys)
        assert "not signed by the director key" in refusal

        assert _active_package(agent.state_dir) == new.package_id
        assert agent.process.poll() is None

        # The broker becomes reachable: the buffered reports reach the control plane.
        relay = TcpRelay(relay_port, "127.0.0.1", int(mqtt_url.rsplit(":", 1)[1])).start()
        wait_for(lambda: _job(plane, jobs["cam-airgap"]).state == "succeeded", 60, what="the bundle job's report")
        with Session(plane.engine) as session:
            device = session.get(Device, "cam-airgap")
            assert device is not None
            wait_for(lambda: (session.refresh(device), device.running_package_id)[1] == new.package_id, 30,
                     what="the device's running package")
        assert _job(plane, jobs["cam-elsewhere"]).state == "queued"  # that device never saw its bundle

        # The agent stopped: install-bundle takes the state lock and runs the agent for the install.
        newer = publish_model(plane, trained_model)
        with Session(plane.engine) as session:
            later = export_bundle(plane.security, session, newer.package_id, out=tmp_path / "newer",
                                  device_ids=["cam-airgap"], expires_in_s=3600)
        agent.process.terminate()
        assert agent.process.wait(timeout=30) == 0
        installed = _install(later.path, config)
        assert installed.returncode == 0, installed.stdout + installed.stderr
        assert "no agent is running" in installed.stdout and "succeeded" in installed.stdout
        assert _active_package(agent.state_dir) == newer.package_id
        wait_for(lambda: _job(plane, later.jobs["cam-airgap"]).state == "succeeded", 30,
                 what="the report of the install done by install-bundle")
    finally:
        if agent.process.poll() is None:
            agent.process.terminate()
            agent.process.wait(timeout=30)
        if relay is not None:
            relay.stop()
