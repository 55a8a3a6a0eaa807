"""A retraining started from the API is a job: it answers at once, counts epochs, and a
cancel during training releases nothing and leaves the proposal open to retrain again."""

from __future__ import annotations

from datetime import UTC, datetime

import cv2
import pytest
from sqlmodel import Session, select

from cloud.fleet.tables import Package
from cloud.governance.tables import RetrainingProposal
from cloud.monitor.tables import SampleBlob, SampleRecord
from cloud.pipeline.data.dataset import decode_image, scan_imagefolder, store_dataset
from cloud.pipeline.data.synth import write_synthetic_dataset
from tests.support.jobs import wait_for_job
from tests.ui.helpers import make_release

pytestmark = pytest.mark.integration

DEVICE = "cam-retrain-1"


def _open_proposal(plane, tmp_path) -> str:
    """A base release and dataset, 64 labelled random-stream samples from one device, an open proposal."""
    import hashlib

    release = make_release(plane, tmp_path / "release")
    dataset = scan_imagefolder(write_synthetic_dataset(tmp_path / "shapes", images_per_class=20, seed=7))
    base = store_dataset(dataset, plane.settings.data_dir / "datasets")
    with Session(plane.engine) as session:
        for i, sample in enumerate(base.samples[:64]):
            ok, jpeg = cv2.imencode(".jpg", decode_image(sample.path))
            assert ok
            content = jpeg.tobytes()
            sha = hashlib.sha256(content).hexdigest()
            if session.get(SampleBlob, sha) is None:
                session.add(SampleBlob(sha256=sha, device_id=DEVICE, content=content, size_bytes=len(content)))
            session.add(SampleRecord(message_id=f"msg-rt-{i:04d}", sample_id=f"smp-rt-{i:04d}", device_id=DEVICE,
                                     sampler="random", captured_at=datetime.now(UTC), image_sha256=sha,
                                     image_bytes=len(content), status="labelled", label=sample.label,
                                     labelled_by="test"))
        session.add(RetrainingProposal(id="rp-jobtest", created_by="test", base_model_version=release.model_version,
                                       base_package_id=release.package_id, base_dataset_id=base.dataset_id,
                                       device_ids=[DEVICE]))
        session.commit()
    return "rp-jobtest"


def test_retrain_job_reports_epochs_and_cancel_releases_nothing(control_plane, api, tmp_path) -> None:
    proposal_id = _open_proposal(control_plane, tmp_path)
    with Session(control_plane.engine) as session:
        packages_before = len(session.exec(select(Package)).all())

    response = api.post(f"/api/v1/governance/proposals/{proposal_id}/retrain", params={"epochs": 200})
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    assert response.json()["kind"] == "retrain"
    running = wait_for_job(api, job_id, timeout_s=240, what="training",
                           predicate=lambda j: j["state"] == "running" and j["message"].startswith("epoch "))
    assert 0 < running["progress"] < 1
    # While it trains, the proposal is busy: a second retrain is refused.
    assert api.get(f"/api/v1/governance/proposals/{proposal_id}").json()["state"] == "training"
    assert api.post(f"/api/v1/governance/proposals/{proposal_id}/retrain").status_code == 409

    assert api.post(f"/api/v1/jobs/{job_id}/cancel").status_code == 200
    ended = wait_for_job(api, job_id, timeout_s=240)
    assert ended["state"] == "cancelled", ended

    proposal = api.get(f"/api/v1/governance/proposals/{proposal_id}").json()
    assert proposal["state"] == "open" and proposal["new_package_id"] is None
    assert proposal["new_model_version"] is None
    with Session(control_plane.engine) as session:
        assert len(session.exec(select(Package)).all()) == packages_before
    actions = [e["action"] for e in api.get("/api/v1/governance/audit", params={"subject_id": proposal_id}).json()]
    assert "retraining.stopped" in actions and "release.built" not in actions
