"""Retraining proposals, rollout proposals and their approval, the audit log, lineage."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query

from cloud.api.deps import ActorDep, PlaneDep, SessionDep
from cloud.governance import proposals
from cloud.governance.audit import list_events
from cloud.governance.lineage import lineage
from cloud.governance.retrain import RetrainSettings
from cloud.governance.retrain import retrain as run

router = APIRouter(prefix="/governance", tags=["governance"])


@router.get("/proposals")
def list_proposals(session: SessionDep, state: str | None = None) -> list[dict[str, Any]]:
    return [proposals.proposal_detail(p) for p in proposals.list_proposals(session, state)]


@router.get("/proposals/{proposal_id}")
def get_proposal(proposal_id: str, session: SessionDep) -> dict[str, Any]:
    return proposals.proposal_detail(proposals.get_proposal(session, proposal_id))


@router.post("/proposals/{proposal_id}/retrain")
def retrain(proposal_id: str, plane: PlaneDep, actor: ActorDep, epochs: int = Query(default=6, ge=1, le=200)
            ) -> dict[str, Any]:
    """Run the retraining now (blocking): new dataset version, training, validation, rollout proposal."""

    settings = plane.settings
    config = RetrainSettings(datasets_dir=settings.data_dir / "datasets", models_dir=settings.models_dir,
                             packages_dir=settings.packages_dir, epochs=epochs,
                             auto_approve=settings.monitor.auto_approve_rollouts,
                             min_reference_samples=settings.monitor.min_reference_samples)
    return proposals.proposal_detail(run(plane.engine, proposal_id, config, actor=actor))


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
