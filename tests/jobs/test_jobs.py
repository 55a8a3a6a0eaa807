"""Long work as jobs: the API answers at once, jobs show progress, can be cancelled, and a
worker that dies mid-job leaves its job failed ("worker lost"), never "running".

The PostgreSQL tests run jobs in a separate ``python -m cloud.workers.jobs`` process
(the control plane runs none itself) on procrastinate's queue; the embedded test runs
the default with no settings at all (SQLite, embedded broker, jobs on the plane's threads).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import control_plane_admin_headers
from tests.support.jobs import wait_for_job

REPO = Path(__file__).resolve().parents[2]
# Heartbeats and the lost-worker timeout shrink so a killed worker shows within seconds, with
# room for a busy machine: a heartbeat starved for longer than the timeout fails a live job.
HEARTBEAT_S = 1.0
LOST_AFTER_S = 15.0
# Many epochs on a tiny dataset: each epoch is quick (a progress report, a chance to cancel),
# and the job cannot end on its own before the test acts on it.
LONG_EPOCHS = 500


def _dataset(root: Path) -> Path:
    from cloud.pipeline.data.synth import write_synthetic_dataset

    return write_synthetic_dataset(root, images_per_class=12, seed=5)


def _plane(tmp_path: Path, database_url: str | None, mqtt_url: str | None, topic_prefix: str, *,
           in_process_workers: int):
    from cloud.core.config import Settings
    from cloud.jobs.config import JobSettings
    from cloud.server import ControlPlane

    settings = Settings(data_dir=tmp_path / "cloud", database_url=database_url, mqtt_url=mqtt_url,
                        topic_prefix=topic_prefix, api_port=0,
                        jobs=JobSettings(in_process_workers=in_process_workers, heartbeat_s=HEARTBEAT_S,
                                         lost_after_s=LOST_AFTER_S))
    plane = ControlPlane(settings)
    plane.start()
    plane.serve_http_in_thread()
    return plane


def _wait_job(api: httpx.Client, job_id: str, predicate, what: str, timeout_s: float = 240) -> dict[str, Any]:
    return wait_for_job(api, job_id, timeout_s=timeout_s, predicate=predicate, what=what)


class WorkerProcess:
    """``python -m cloud.workers.jobs`` against the plane's database and data directory."""

    def __init__(self, plane, log_path: Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO), "EDGEFLEET_DATABASE_URL": plane.settings.resolved_database_url,
               "EDGEFLEET_DATA_DIR": str(plane.settings.data_dir), "EDGEFLEET_JOBS_HEARTBEAT_S": str(HEARTBEAT_S),
               "EDGEFLEET_JOBS_LOST_AFTER_S": str(LOST_AFTER_S)}
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen([sys.executable, "-m", "cloud.workers.jobs", "--name", "test-worker"],
                                        env=env, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


@pytest.fixture
def postgres_url(database_url: str) -> str:
    if not database_url.startswith("postgresql"):
        pytest.skip("needs PostgreSQL (EDGEFLEET_TEST_DATABASE_URL): separate workers run on procrastinate")
    return database_url


@pytest.fixture
def worker_plane(tmp_path: Path, postgres_url: str, mqtt_url: str, topic_prefix: str) -> Iterator[Any]:
    """A control plane on PostgreSQL that queues jobs but runs none itself, with a dataset ingested."""
    from cloud.pipeline.service import PipelinePaths, ingest

    plane = _plane(tmp_path, postgres_url, mqtt_url, topic_prefix, in_process_workers=0)
    plane.test_dataset_id = ingest(plane.engine, PipelinePaths.under(plane.settings.data_dir),
                                   _dataset(tmp_path / "shapes")).record.id
    yield plane
    plane.stop()


def _client(plane) -> httpx.Client:
    return httpx.Client(base_url=plane.base_url, timeout=15, headers=control_plane_admin_headers(plane))


def test_train_job_answers_at_once_shows_progress_and_cancels_without_publishing(worker_plane, tmp_path) -> None:
    with _client(worker_plane) as api:
        # No worker yet: the job waits queued; cancelled there, it never starts.
        response = api.post("/api/v1/models/train", json={"dataset_id": worker_plane.test_dataset_id,
                                                          "name": "never", "epochs": 1})
        assert response.status_code == 202, response.text
        never = response.json()
        assert never["job_id"].startswith("job-") and never["state"] == "queued" and never["kind"] == "train"
        cancelled = api.post(f"/api/v1/jobs/{never['job_id']}/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
        assert api.post(f"/api/v1/jobs/{never['job_id']}/cancel").status_code == 409

        worker = WorkerProcess(worker_plane, tmp_path / "worker.log")
        try:
            response = api.post("/api/v1/models/train", json={"dataset_id": worker_plane.test_dataset_id,
                                                              "name": "long", "epochs": LONG_EPOCHS, "batch_size": 8})
            assert response.status_code == 202, response.text
            job_id = response.json()["job_id"]
            running = _wait_job(api, job_id, lambda j: j["state"] == "running" and j["progress"] > 0,
                                "running with progress")
            assert running["worker"] == "test-worker"
            assert any("epoch 1/" in line for line in running["log"]), running["log"]
            assert any(j["id"] == job_id for j in api.get("/api/v1/jobs", params={"state": "running"}).json())

            assert api.post(f"/api/v1/jobs/{job_id}/cancel").status_code == 200
            ended = _wait_job(api, job_id, lambda j: j["state"] in ("cancelled", "succeeded", "failed"), "ending")
            assert ended["state"] == "cancelled", ended
            assert ended["progress"] < 1 and ended["result"] == {}
            # Nothing was published: no model version registered by either job.
            assert api.get("/api/v1/models").json() == []
            # The queued job cancelled before the worker started never ran.
            never_after = api.get(f"/api/v1/jobs/{never['job_id']}").json()
            assert never_after["state"] == "cancelled" and never_after["started_at"] is None
            assert never_after["worker"] is None
        finally:
            worker.stop()


def test_worker_killed_mid_job_leaves_the_job_failed_worker_lost(worker_plane, tmp_path) -> None:
    worker = WorkerProcess(worker_plane, tmp_path / "worker.log")
    try:
        with _client(worker_plane) as api:
            response = api.post("/api/v1/models/train", json={"dataset_id": worker_plane.test_dataset_id,
                                                              "name": "killed", "epochs": LONG_EPOCHS,
                                                              "batch_size": 8})
            assert response.status_code == 202, response.text
            job_id = response.json()["job_id"]
            _wait_job(api, job_id, lambda j: j["state"] == "running" and j["progress"] > 0, "running with progress")
            worker.process.send_signal(signal.SIGKILL)
            worker.process.wait(timeout=30)
            ended = _wait_job(api, job_id, lambda j: j["state"] != "running", "leaving running")
            assert ended["state"] == "failed", ended
            assert ended["error"].startswith("worker lost"), ended["error"]
            assert api.get("/api/v1/models").json() == []
    finally:
        worker.stop()


def test_embedded_default_runs_import_and_train_jobs_with_no_extra_service(tmp_path: Path, monkeypatch) -> None:
    # No database, broker or worker settings: SQLite, the embedded broker, jobs on the plane's threads.
    for name in [n for n in os.environ if n.startswith("EDGEFLEET_") and not n.startswith("EDGEFLEET_TEST_")
                 and n != "EDGEFLEET_REQUIRE_SERVICES"]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    from cloud.core.config import Settings
    from cloud.jobs.queue import ThreadJobQueue
    from cloud.server import ControlPlane

    plane = ControlPlane(Settings(api_port=0))
    assert isinstance(plane.jobs, ThreadJobQueue)
    plane.start()
    plane.serve_http_in_thread()
    try:
        with _client(plane) as api:
            # The API imports only from its import root (EDGEFLEET_DATASET_IMPORT_ROOT).
            _dataset(plane.settings.imports_dir / "shapes")
            response = api.post("/api/v1/datasets", json={"path": "shapes"})
            assert response.status_code == 202, response.text
            imported = _wait_job(api, response.json()["job_id"], lambda j: j["state"] != "queued" and
                                 j["state"] != "running", "ending")
            assert imported["state"] == "succeeded", imported
            dataset_id = imported["result"]["dataset_id"]
            assert api.get(f"/api/v1/datasets/{dataset_id}").status_code == 200

            response = api.post("/api/v1/models/train", json={"dataset_id": dataset_id, "epochs": 2,
                                                              "batch_size": 8, "min_accuracy": 0,
                                                              "min_slice_accuracy": 0})
            assert response.status_code == 202, response.text
            job = _wait_job(api, response.json()["job_id"], lambda j: j["state"] not in ("queued", "running"),
                            "ending")
            assert job["state"] == "succeeded", job
            assert job["progress"] == 1 and any("epoch 2/2" in line for line in job["log"]), job["log"]
            version = job["result"]["model_version"]
            assert api.get(f"/api/v1/models/{version}").status_code == 200
            assert api.post(f"/api/v1/jobs/{job['id']}/cancel").status_code == 409
    finally:
        plane.stop()


def test_bad_requests_are_refused_before_anything_is_queued(control_plane, api, tmp_path: Path) -> None:
    unknown = api.post("/api/v1/models/train", json={"dataset_id": "ds-0000000000000000"})
    assert unknown.status_code == 400 and "ingest it first" in unknown.json()["detail"]
    bad_profile = api.post("/api/v1/models/train", json={"dataset_id": "ds-0000000000000000", "profile": "toaster"})
    assert bad_profile.status_code == 400 and "unknown profile" in bad_profile.json()["detail"]
    missing = api.post("/api/v1/datasets", json={"path": "nowhere"})
    assert missing.status_code == 400 and "does not exist" in missing.json()["detail"]
    assert api.post("/api/v1/models/none-1/builds", json={"profiles": ["x86-64-avx2"]}).status_code == 404
    assert api.post("/api/v1/governance/proposals/nope/retrain").status_code == 404
    assert api.get("/api/v1/jobs/job-nope").status_code == 404
    assert api.get("/api/v1/jobs", params={"state": "sleeping"}).status_code == 400
    assert api.get("/api/v1/jobs").json() == []
