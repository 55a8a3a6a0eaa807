"""Governance without a broker: proposals from alerts, labels, approval (manual and automatic), audit."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlmodel import Session, SQLModel, create_engine, select

import cloud.rollout.tables  # the rollout engine's tables, for approval
import cloud.security.tables  # noqa: F401
from cloud.core.timestamps import utc_now
from cloud.fleet.crud import Conflict
from cloud.fleet.tables import Device, ModelVersion, Package
from cloud.governance.audit import list_events
from cloud.governance.labelling import LabelError, accept_labels
from cloud.governance.proposals import approve_rollout, attach_alert, propose_rollout, reject_rollout
from cloud.governance.tables import RetrainingProposal
from cloud.monitor.tables import DriftAlert, SampleRecord


@pytest.fixture
def session(tmp_path: Path):
    engine = create_engine(f"sqlite:///{tmp_path / 'g.db'}")
    SQLModel.metadata.create_all(engine)
    with Session(engine) as session:
        for device_id in ("cam-1", "cam-2", "cam-3"):
            session.add(Device(id=device_id, online=True, running_package_id="v1-pkg", running_model_version="v1"))
        model = ModelVersion(name="shapes", version="v1", dataset_id="ds-base", onnx_path="/x", onnx_sha256="0" * 64)
        session.add(model)
        session.flush()
        assert model.id is not None
        session.add(Package(id="v1-pkg", model_version_id=model.id, model_version="v1",
                            hardware_profiles=["x86-64-avx2"], manifest_sha256="0" * 64, size_bytes=1, path="/x"))
        model2 = ModelVersion(name="shapes", version="v2", dataset_id="ds-new", onnx_path="/y", onnx_sha256="1" * 64)
        session.add(model2)
        session.flush()
        assert model2.id is not None
        session.add(Package(id="v2-pkg", model_version_id=model2.id, model_version="v2",
                            hardware_profiles=["x86-64-avx2"], manifest_sha256="1" * 64, size_bytes=1, path="/y"))
        session.commit()
        yield session


def alert(session: Session, alert_id: str, device_id: str) -> DriftAlert:
    row = DriftAlert(id=alert_id, device_id=device_id, package_id="v1-pkg", model_version="v1")
    session.add(row)
    session.flush()
    return row


def test_alerts_open_one_proposal_per_package_and_join_it(session: Session) -> None:
    first = attach_alert(session, alert(session, "al-1", "cam-1"), actor="monitor")
    second = attach_alert(session, alert(session, "al-2", "cam-2"), actor="monitor")
    session.commit()
    assert first.id == second.id
    proposal = session.get(RetrainingProposal, first.id)
    assert proposal is not None and proposal.device_ids == ["cam-1", "cam-2"] and proposal.alert_ids == ["al-1", "al-2"]
    assert proposal.base_dataset_id == "ds-base" and proposal.base_model_version == "v1"
    assert [e.action for e in list_events(session, subject_id=first.id)] == ["proposal.opened"]


def test_labels_are_checked_and_audited(session: Session) -> None:
    for sample_id, stats_only in (("s-1", False), ("s-2", False), ("s-3", True)):
        session.add(SampleRecord(message_id=f"m-{sample_id}", sample_id=sample_id, device_id="cam-1",
                                 sampler="random", captured_at=utc_now(), stats_only=stats_only))
    session.commit()
    with pytest.raises(LabelError, match="unknown sample ids: nope"):
        accept_labels(session, {"nope": "circle"}, actor="alice")
    with pytest.raises(LabelError, match="stats-only"):
        accept_labels(session, {"s-3": "circle"}, actor="alice")
    with pytest.raises(LabelError, match="valid classes: circle, square"):
        accept_labels(session, {"s-1": "hexagon"}, actor="alice", allowed=["circle", "square"])
    assert len(accept_labels(session, {"s-1": "circle", "s-2": None}, actor="alice")) == 2
    rows = {r.sample_id: r for r in session.exec(select(SampleRecord))}
    assert (rows["s-1"].status, rows["s-1"].label, rows["s-1"].labelled_by) == ("labelled", "circle", "alice")
    assert rows["s-2"].status == "rejected"
    event = list_events(session, action="samples.labelled")[0]
    assert event.actor == "alice" and event.details["labelled"] == 1 and event.details["rejected"] == 1


def validated(session: Session) -> RetrainingProposal:
    proposal = attach_alert(session, alert(session, "al-9", "cam-1"), actor="monitor")
    proposal.state, proposal.new_model_version, proposal.new_package_id = "validated", "v2", "v2-pkg"
    proposal.validation = {"passed": True}
    session.add(proposal)
    session.commit()
    return proposal


def test_rollout_proposal_waits_for_approval_then_starts_a_rollout(session: Session) -> None:
    rollout = propose_rollout(session, validated(session), actor="governance", auto_approve=False)
    assert rollout.state == "pending" and rollout.device_ids == ["cam-1"] and rollout.rollout_id is None
    started = approve_rollout(session, rollout.id, actor="operator:bob")
    assert started.state == "started" and started.decided_by == "operator:bob" and not started.auto_approved
    assert started.rollout_id is not None  # the rollout engine has it now
    with pytest.raises(Conflict):
        approve_rollout(session, rollout.id, actor="operator:bob")
    actions = [e.action for e in list_events(session, subject_id=rollout.id)]
    assert actions == ["rollout.proposed", "rollout.approved", "rollout.started"]


def test_auto_approval_is_recorded_as_such(session: Session) -> None:
    rollout = propose_rollout(session, validated(session), actor="governance", auto_approve=True)
    assert rollout.state == "started" and rollout.auto_approved and rollout.decided_by == "governance:auto-approve"


def test_a_rejected_rollout_proposal_cannot_be_approved(session: Session) -> None:
    rollout = propose_rollout(session, validated(session), actor="governance", auto_approve=False)
    assert reject_rollout(session, rollout.id, actor="operator:carol", reason="not on a Friday").state == "rejected"
    with pytest.raises(Conflict, match="rejected, not pending"):
        approve_rollout(session, rollout.id, actor="operator:carol")


def test_an_existing_release_gets_a_reference_as_a_new_package(session: Session, tmp_path: Path) -> None:
    import numpy as np

    from agent.capture.scenes import render_frame
    from agent.contract import ModelArtifact, PackageManifest
    from cloud.governance.retrain import repackage_with_reference
    from cloud.monitor.service import load_reference
    from cloud.pipeline.package.builder import build_package
    from cloud.pipeline.train.trainer import DEFAULT_SPEC
    from tests.drift.simdevice import colour_model

    labels = ["circle", "cross", "square", "triangle"]
    onnx = colour_model(tmp_path / "model.onnx", len(labels))
    built = build_package(packages_dir=tmp_path / "packages", model_name="shapes", model_version="v1", labels=labels,
                          spec=DEFAULT_SPEC, hardware_profiles=["x86-64-avx2"],
                          artifacts=[(onnx, ModelArtifact(file="model.onnx", runtime="onnxruntime", precision="fp32"))])
    old = session.get(Package, "v1-pkg")
    assert old is not None
    old.path = str(built.directory)
    session.add(old)
    session.commit()
    rng = np.random.default_rng(0)
    images = [render_frame(labels[i % 4], rng, width=96, height=72) for i in range(100)]
    new = repackage_with_reference(session, "v1-pkg", images, packages_dir=tmp_path / "packages", window_frames=20)
    assert new.id != "v1-pkg" and new.model_version == "v1" and new.model_version_id == old.model_version_id
    manifest = PackageManifest.from_bytes((Path(new.path) / "manifest.json").read_bytes())
    assert manifest.drift_reference_file == "drift_reference.json"
    reference = load_reference(session, new.id)
    assert reference is not None and reference.reference_size == 50 and reference.labels == labels
    assert [e.action for e in list_events(session, subject_id=new.id)] == ["release.reference_added"]
    with pytest.raises(ValueError, match="at least 64"):
        repackage_with_reference(session, "v1-pkg", images[:10], packages_dir=tmp_path / "packages")
