"""Retraining and rollout proposals: alert → retraining proposal → validated release →
canary rollout proposal → approval (human, or automatic when configured) → rollout.

Every transition is recorded in the audit log with its actor.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from sqlmodel import Session, col, select

from cloud.core.timestamps import utc_now
from cloud.fleet.crud import Conflict, NotFound
from cloud.fleet.tables import ModelVersion, Package
from cloud.governance import audit
from cloud.governance.tables import RetrainingProposal, RolloutProposal
from cloud.monitor.tables import DriftAlert
from cloud.rollout.service import create_rollout
from cloud.rollout.spec import ReleaseSpec, RolloutSpec, StageSpec, TargetSelector

log = logging.getLogger(__name__)

__all__ = [
    "approve_rollout",
    "attach_alert",
    "get_proposal",
    "get_rollout_proposal",
    "list_proposals",
    "list_rollout_proposals",
    "proposal_detail",
    "proposal_task",
    "propose_rollout",
    "reject_rollout",
]

OPEN_STATES = ("open", "training")


def _new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def attach_alert(session: Session, alert: DriftAlert, *, actor: str) -> RetrainingProposal:
    """Open a retraining proposal for ``alert``, or join the open one for the same package.

    The caller commits.
    """
    proposal = session.exec(select(RetrainingProposal).where(
        col(RetrainingProposal.base_package_id) == alert.package_id,
        col(RetrainingProposal.state).in_(OPEN_STATES))).first()
    if proposal is None:
        package = session.get(Package, alert.package_id) if alert.package_id else None
        model = session.get(ModelVersion, package.model_version_id) if package is not None else None
        proposal = RetrainingProposal(id=_new_id("rp"), created_by=actor, base_package_id=alert.package_id,
                                      base_model_version=alert.model_version or (model.version if model else None),
                                      base_dataset_id=model.dataset_id if model else None)
        audit.record(session, actor=actor, action="proposal.opened", subject_type="retraining_proposal",
                     subject_id=proposal.id, details={"alert_id": alert.id, "package_id": alert.package_id})
    proposal.alert_ids = sorted({*proposal.alert_ids, alert.id})
    if alert.device_id:
        proposal.device_ids = sorted({*proposal.device_ids, alert.device_id})
    proposal.updated_at = utc_now()
    alert.proposal_id = proposal.id
    session.add(proposal)
    session.add(alert)
    return proposal


def get_proposal(session: Session, proposal_id: str) -> RetrainingProposal:
    proposal = session.get(RetrainingProposal, proposal_id)
    if proposal is None:
        raise NotFound(f"retraining proposal {proposal_id!r} does not exist")
    return proposal


def proposal_task(session: Session, proposal: RetrainingProposal) -> str:
    """``detection`` or ``classification``: the task of the model the proposal retrains."""
    package = session.get(Package, proposal.base_package_id) if proposal.base_package_id else None
    model = session.get(ModelVersion, package.model_version_id) if package is not None else None
    task = (model.hyperparameters or {}).get("task") if model is not None else None
    return "detection" if task == "detection" else "classification"


def list_proposals(session: Session, state: str | None = None) -> list[RetrainingProposal]:
    query = select(RetrainingProposal)
    if state is not None:
        query = query.where(col(RetrainingProposal.state) == state)
    return list(session.exec(query.order_by(col(RetrainingProposal.created_at))))


def proposal_detail(proposal: RetrainingProposal) -> dict[str, Any]:
    return proposal.model_dump(mode="json")


def propose_rollout(session: Session, proposal: RetrainingProposal, *, actor: str,
                    auto_approve: bool) -> RolloutProposal:
    """A canary rollout of the proposal's new release to the devices that drifted."""
    if proposal.new_package_id is None or proposal.new_model_version is None:
        raise Conflict(f"proposal {proposal.id} has no validated release to roll out")
    rollout = RolloutProposal(id=_new_id("rop"), retraining_proposal_id=proposal.id,
                              model_version=proposal.new_model_version, package_id=proposal.new_package_id,
                              device_ids=list(proposal.device_ids),
                              reason=f"retrained after drift alerts {', '.join(proposal.alert_ids)[:400]}")
    session.add(rollout)
    proposal.rollout_proposal_id, proposal.state, proposal.updated_at = rollout.id, "rollout_proposed", utc_now()
    session.add(proposal)
    audit.record(session, actor=actor, action="rollout.proposed", subject_type="rollout_proposal",
                 subject_id=rollout.id, details={"package_id": rollout.package_id, "devices": rollout.device_ids,
                                                 "validation": proposal.validation})
    session.commit()
    if auto_approve:
        return approve_rollout(session, rollout.id, actor="governance:auto-approve", auto=True)
    return rollout


def get_rollout_proposal(session: Session, rollout_proposal_id: str) -> RolloutProposal:
    proposal = session.get(RolloutProposal, rollout_proposal_id)
    if proposal is None:
        raise NotFound(f"rollout proposal {rollout_proposal_id!r} does not exist")
    return proposal


def list_rollout_proposals(session: Session, state: str | None = None) -> list[RolloutProposal]:
    query = select(RolloutProposal)
    if state is not None:
        query = query.where(col(RolloutProposal.state) == state)
    return list(session.exec(query.order_by(col(RolloutProposal.created_at))))


def _start(session: Session, proposal: RolloutProposal, actor: str) -> None:
    """Hand the release to the rollout engine: the drifted devices are the canary cohort, one stage."""
    spec = RolloutSpec(name=f"retrained {proposal.model_version} ({proposal.id})",
                       release=ReleaseSpec(package_id=proposal.package_id),
                       target=TargetSelector(device_ids=list(proposal.device_ids)),
                       stages=[StageSpec(percent=100)], soak_s=60)
    rollout = create_rollout(session, spec, actor=actor)
    proposal.rollout_id = rollout.id


def approve_rollout(session: Session, rollout_proposal_id: str, *, actor: str,
                    auto: bool = False) -> RolloutProposal:
    """Approve a pending rollout proposal and start the rollout. Raises ``NotFound``, ``Conflict``."""
    proposal = get_rollout_proposal(session, rollout_proposal_id)
    if proposal.state != "pending":
        raise Conflict(f"rollout proposal {proposal.id} is {proposal.state}, not pending")
    proposal.state, proposal.decided_by, proposal.decided_at, proposal.auto_approved = "approved", actor, utc_now(), auto
    audit.record(session, actor=actor, action="rollout.approved", subject_type="rollout_proposal",
                 subject_id=proposal.id, details={"auto": auto, "package_id": proposal.package_id})
    session.add(proposal)
    session.commit()
    _start(session, proposal, actor)
    proposal.state = "started"
    audit.record(session, actor=actor, action="rollout.started", subject_type="rollout_proposal",
                 subject_id=proposal.id, details={"rollout_id": proposal.rollout_id,
                                                  "deployment_id": proposal.deployment_id})
    session.add(proposal)
    session.commit()
    session.refresh(proposal)
    return proposal


def reject_rollout(session: Session, rollout_proposal_id: str, *, actor: str, reason: str = "") -> RolloutProposal:
    proposal = get_rollout_proposal(session, rollout_proposal_id)
    if proposal.state != "pending":
        raise Conflict(f"rollout proposal {proposal.id} is {proposal.state}, not pending")
    proposal.state, proposal.decided_by, proposal.decided_at = "rejected", actor, utc_now()
    audit.record(session, actor=actor, action="rollout.rejected", subject_type="rollout_proposal",
                 subject_id=proposal.id, details={"reason": reason[:500]})
    session.add(proposal)
    session.commit()
    session.refresh(proposal)
    return proposal
