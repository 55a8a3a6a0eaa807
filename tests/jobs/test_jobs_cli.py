"""``edgefleet jobs`` over HTTP, against a control plane that runs jobs itself (the default:
on PostgreSQL a procrastinate worker thread in the plane, on SQLite its thread pool)."""

from __future__ import annotations

import json

import httpx
import pytest
from typer.testing import CliRunner

from cloud.cli import app
from cloud.cli.client import Exit
from cloud.security.tables import Role
from tests.ui.helpers import dashboard_login, make_token

pytestmark = pytest.mark.integration


def test_jobs_watch_list_show_and_cancel(control_plane, api, tmp_path, monkeypatch) -> None:
    from cloud.pipeline.data.synth import write_synthetic_dataset
    from cloud.pipeline.service import PipelinePaths, ingest

    root = write_synthetic_dataset(tmp_path / "shapes", images_per_class=12, seed=5)
    dataset_id = ingest(control_plane.engine, PipelinePaths.under(control_plane.settings.data_dir), root).record.id
    runner = CliRunner()
    env = {"EDGEFLEET_SERVER": control_plane.base_url,
           "EDGEFLEET_TOKEN": make_token(control_plane, Role.OPERATOR, "jobs operator")}
    queued = api.post("/api/v1/models/train", json={"dataset_id": dataset_id, "epochs": 2, "batch_size": 8,
                                                    "min_accuracy": 0, "min_slice_accuracy": 0})
    assert queued.status_code == 202, queued.text
    job_id = queued.json()["job_id"]

    watched = runner.invoke(app, ["jobs", "watch", job_id, "--json", "--interval", "0.2"], env=env)
    assert watched.exit_code == 0, watched.output
    job = json.loads(watched.stdout)
    assert job["state"] == "succeeded" and job["result"]["model_version"]

    listed = runner.invoke(app, ["jobs", "list", "--json", "--kind", "train"], env=env)
    assert listed.exit_code == 0 and [j["id"] for j in json.loads(listed.stdout)] == [job_id]
    shown = runner.invoke(app, ["jobs", "show", job_id], env=env)
    assert shown.exit_code == 0 and "succeeded" in shown.stdout and "epoch 2/2" in shown.stdout
    assert runner.invoke(app, ["jobs", "cancel", job_id], env=env).exit_code == Exit.BAD_INPUT  # already ended
    assert runner.invoke(app, ["jobs", "show", "job-nope"], env=env).exit_code == Exit.NOT_FOUND
    assert runner.invoke(app, ["governance", "retrain", "nope", "--no-wait"], env=env).exit_code == Exit.NOT_FOUND

    # The dashboard's jobs page lists it with its state, progress and log tail.
    with httpx.Client(base_url=control_plane.base_url, timeout=15) as browser:
        logged_in = dashboard_login(browser, env["EDGEFLEET_TOKEN"], "/ui/jobs")
        assert logged_in.status_code == 303, logged_in.text
        page = browser.get("/ui/jobs").text
    assert f'data-job="{job_id}"' in page and "badge-succeeded" in page and "epoch 2/2" in page

    # A separate worker needs PostgreSQL; on SQLite it says so instead of waiting for nothing.
    monkeypatch.delenv("EDGEFLEET_DATABASE_URL", raising=False)
    refused = runner.invoke(app, ["worker"], env={"EDGEFLEET_DATA_DIR": str(tmp_path / "lone")})
    assert refused.exit_code == Exit.BAD_INPUT and "PostgreSQL" in refused.output
