"""The audit log: who or what did each step, when, and with which numbers.

One table for every operator action (labels, promotions, deployments, rollouts and their
approve/pause/resume/abort/cancel, proposals, API tokens, device revocation, keys) and every
automatic step (alerts, retraining). An action through the API names the API token it used
(``operator:<token name>``, see :func:`cloud.api.deps.audit_actor`); the monitor and the
engine name themselves; the local ``edgefleet keys`` commands name ``local:<os user>``.
"""

from __future__ import annotations

from typing import Any

from sqlmodel import Session, col, select

from cloud.governance.tables import AuditEvent

__all__ = ["list_events", "record"]


def record(session: Session, *, actor: str, action: str, subject_type: str, subject_id: str,
           details: dict[str, Any] | None = None) -> AuditEvent:
    """Add an audit event to the session; the caller's commit makes it durable with the step itself."""
    event = AuditEvent(actor=actor[:128], action=action[:64], subject_type=subject_type[:32],
                       subject_id=subject_id[:128], details=details or {})
    session.add(event)
    return event


def list_events(session: Session, *, subject_id: str | None = None, action: str | None = None,
                actor: str | None = None, subject_ids: list[str] | None = None, limit: int = 200,
                newest: bool = False) -> list[AuditEvent]:
    """Events oldest first: the first ``limit``, or with ``newest`` the last ``limit``.

    ``action`` ending in ``.`` matches every action with that prefix (``rollout.``).
    """
    query = select(AuditEvent)
    if subject_id is not None:
        query = query.where(col(AuditEvent.subject_id) == subject_id)
    if subject_ids is not None:
        query = query.where(col(AuditEvent.subject_id).in_(subject_ids))
    if action is not None:
        query = query.where(col(AuditEvent.action).startswith(action) if action.endswith(".")
                            else col(AuditEvent.action) == action)
    if actor is not None:
        query = query.where(col(AuditEvent.actor) == actor)
    if newest:
        return list(reversed(list(session.exec(query.order_by(col(AuditEvent.id).desc()).limit(limit)))))
    return list(session.exec(query.order_by(col(AuditEvent.id)).limit(limit)))
