"""``edgefleet model lineage VERSION``: from data to devices, with every recorded decision."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session, col, select

from cloud.fleet import crud
from cloud.fleet.tables import Deployment, Device, Package
from cloud.governance.audit import list_events
from cloud.governance.tables import DatasetLineage, RetrainingProposal, RolloutProposal
from cloud.monitor.tables import SampleRecord
from cloud.rollout.tables import RolloutDevice

__all__ = ["lineage"]


def _dataset_chain(session: Session, dataset_id: str) -> list[dict[str, Any]]:
    chain: list[dict[str, Any]] = []
    seen: set[str] = set()
    current: str | None = dataset_id
    while current is not None and current not in seen:
        seen.add(current)
        row = session.get(DatasetLineage, current)
        if row is None:
            chain.append({"dataset_id": current, "parent": None, "origin": "ingested"})
            break
        samples = list(session.exec(select(SampleRecord).where(col(SampleRecord.sample_id).in_(row.sample_ids))))
        by_device: dict[str, int] = {}
        for sample in samples:
            by_device[sample.device_id] = by_device.get(sample.device_id, 0) + 1
        chain.append({"dataset_id": current, "parent": row.parent_dataset_id, "origin": "retraining",
                      "proposal_id": row.proposal_id, "created_by": row.created_by, "created_at": row.created_at,
                      "added_samples": len(row.sample_ids), "samples_by_device": by_device,
                      "labelled_by": sorted({s.labelled_by for s in samples if s.labelled_by})})
        current = row.parent_dataset_id
    return chain


def lineage(session: Session, version: str) -> dict[str, Any]:
    """The model version's data chain, packages, proposals, rollouts and the devices running it.

    Raises:
        NotFound: unknown model version.
    """
    model = crud.get_model_version(session, version)
    packages = list(session.exec(select(Package).where(col(Package.model_version) == version)))
    package_ids = [p.id for p in packages]
    proposals = list(session.exec(select(RetrainingProposal).where(col(RetrainingProposal.new_model_version) == version)))
    rollouts = list(session.exec(select(RolloutProposal).where(col(RolloutProposal.model_version) == version)))
    running = list(session.exec(select(Device).where(col(Device.running_model_version) == version)))
    # Every step that touched this version: its promotion, its packages, the deployments and
    # rollouts that shipped them (started by hand or from a proposal), and the proposals.
    deployment_ids = [d.id for d in session.exec(select(Deployment).where(col(Deployment.package_id).in_(package_ids)))]
    rollout_ids = sorted({row for row in session.exec(select(RolloutDevice.rollout_id).where(
        col(RolloutDevice.package_id).in_(package_ids)))} | {r.rollout_id for r in rollouts if r.rollout_id})
    subjects = [version, *package_ids, *deployment_ids, *rollout_ids, *(p.id for p in proposals),
                *(r.id for r in rollouts)]
    events = [{"at": e.at, "actor": e.actor, "action": e.action, "subject": e.subject_id, "details": e.details}
              for e in list_events(session, subject_ids=subjects, limit=1000, newest=True)]
    return {
        "model_version": model.version,
        "model_name": model.name,
        "created_at": model.created_at,
        "code_version": model.code_version,
        "metrics": {k: v for k, v in model.metrics.items() if k in ("accuracy", "validation")},
        "datasets": _dataset_chain(session, model.dataset_id),
        "packages": package_ids,
        "retraining_proposals": [{"id": p.id, "state": p.state, "alerts": p.alert_ids, "devices": p.device_ids,
                                  "base_model_version": p.base_model_version, "validation": p.validation}
                                 for p in proposals],
        "rollout_proposals": [{"id": r.id, "state": r.state, "devices": r.device_ids, "decided_by": r.decided_by,
                               "auto_approved": r.auto_approved, "rollout_id": r.rollout_id,
                               "deployment_id": r.deployment_id} for r in rollouts],
        "devices_running": sorted(d.id for d in running),
        "audit": events,
    }
