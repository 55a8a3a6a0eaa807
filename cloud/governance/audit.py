"""The audit log: who or what did each step, when, and with which numbers."""

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
                limit: int = 200) -> list[AuditEvent]:
    query = select(AuditEvent)
    if subject_id is not None:
        query = query.where(col(AuditEvent.subject_id) == subject_id)
    if action is not None:
        query = query.where(col(AuditEvent.action) == action)
    return list(session.exec(query.order_by(col(AuditEvent.id)).limit(limit)))
