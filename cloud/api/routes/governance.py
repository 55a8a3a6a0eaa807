"""Retraining proposals, rollout proposals and their approval, the audit log, lineage."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query

from cloud.api.deps import ActorDep, PlaneDep, SessionDep
from cloud.api.routes.jobs import submit
from cloud.errors import ConflictError
from cloud.governance import proposals
from cloud.governance.audit import list_events
from cloud.governance.lineage import lineage
from cloud.governance.sampling import estimate_random_stream

router = APIRouter(prefix="/governance", tags=["governance"])


@router.get("/proposals")
def list_proposals(session: SessionDep, state: str | None = None) -> list[dict[str, Any]]:
    return [proposals.proposal_detail(p) for p in proposals.list_proposals(session, state)]


@router.get("/proposals/{proposal_id}")
def get_proposal(proposal_id: str, session: SessionDep) -> dict[str, Any]:
    return proposals.proposal_detail(proposals.get_proposal(session, proposal_id))


@router.post("/proposals/{proposal_id}/retrain", status_code=202)
def retrain(proposal_id: str, session: SessionDep, plane: PlaneDep, actor: ActorDep,
            epochs: int | None = Query(default=None, ge=1, le=200,
                                       description="default: 6 for a classifier, the base detector's own")
            ) -> dict[str, Any]:
    """Queue the retraining (new dataset version, training, validation, rollout proposal); 202 with the job id.

    Refused at once (409) when the proposal is not open or, for a classifier, its devices have not
    sampled enough yet (the answer says how long at the current rate, and which settings change
    that; a detection release takes no reference from device samples). The
    job's result carries the updated proposal; ``POST /api/v1/jobs/{id}/cancel`` stops it
    during training, before anything is released.
    """
    proposal = proposals.get_proposal(session, proposal_id)
    if proposal.state != "open":
        raise ConflictError(f"proposal {proposal.id} is {proposal.state}; only open proposals can be retrained")
    stream = estimate_random_stream(session, proposal.device_ids, plane.settings.monitor.min_reference_samples)
    if stream.missing and proposals.proposal_task(session, proposal) == "classification":
        raise ConflictError(f"proposal {proposal.id} cannot be retrained yet: {stream.explain()}")
    return submit(plane, "retrain", {"proposal_id": proposal_id, "epochs": epochs, "actor": actor},
                  created_by=actor)


@router.get("/rollout-proposals")
def list_rollout_proposals(session: SessionDep, state: str | None = None) -> list[dict[str, Any]]:
    return [p.model_dump(mode="json") for p in proposals.list_rollout_proposals(session, state)]


@router.post("/rollout-proposals/{proposal_id}/approve")
def approve(proposal_id: str, session: SessionDep, actor: ActorDep) -> dict[str, Any]:
    return proposals.approve_rollout(session, proposal_id, actor=actor).model_dump(mode="json")


@router.post("/rollout-proposals/{proposal_id}/reject")
def reject(proposal_id: str, session: SessionDep, actor: ActorDep, reason: str = "") -> dict[str, Any]:
    return proposals.reject_rollout(session, proposal_id, actor=actor, reason=reason).model_dump(mode="json")


@router.get("/audit")
def audit(session: SessionDep, subject_id: str | None = None, action: str | None = None,
          actor: str | None = None, limit: int = Query(default=200, ge=1, le=5000)) -> list[dict[str, Any]]:
    """The audit log, the newest ``limit`` events oldest first: every operator action (with the name of the
    API token it used) and every automatic step. ``action`` matches a prefix: ``rollout.`` for all of them."""
    return [e.model_dump(mode="json") for e in list_events(session, subject_id=subject_id, action=action, actor=actor,
                                                           limit=limit, newest=True)]


@router.get("/lineage/{model_version}")
def model_lineage(model_version: str, session: SessionDep) -> dict[str, Any]:
    return lineage(session, model_version)
