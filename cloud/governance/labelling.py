"""The labelling API's data access: list unlabelled samples, accept labels, read images.

Labellers are people or oracles (the synthetic generator in demos and tests); each
label records who gave it and when, and each batch is one audit event.
"""

from __future__ import annotations

from collections.abc import Mapping

from sqlmodel import Session, col, select

from cloud.errors import InvalidInputError
from cloud.fleet.crud import NotFound
from cloud.fleet.tables import utc_now
from cloud.governance import audit
from cloud.monitor.tables import SampleBlob, SampleRecord

__all__ = ["LabelError", "accept_labels", "list_samples", "sample_image"]


class LabelError(InvalidInputError):
    """A label batch that cannot be applied (the API maps this to 422)."""


def list_samples(session: Session, *, status: str | None = "unlabelled", device_ids: list[str] | None = None,
                 sampler: str | None = None, limit: int = 500, offset: int = 0) -> list[SampleRecord]:
    query = select(SampleRecord)
    if status is not None:
        query = query.where(col(SampleRecord.status) == status)
    if device_ids:
        query = query.where(col(SampleRecord.device_id).in_(device_ids))
    if sampler is not None:
        query = query.where(col(SampleRecord.sampler) == sampler)
    return list(session.exec(query.order_by(col(SampleRecord.id)).offset(offset).limit(limit)))


def sample_image(session: Session, sample_id: str) -> bytes:
    """The sample's JPEG. Raises ``NotFound`` for an unknown sample or a stats-only one."""
    record = session.exec(select(SampleRecord).where(col(SampleRecord.sample_id) == sample_id)).first()
    if record is None:
        raise NotFound(f"sample {sample_id!r} does not exist")
    if record.image_sha256 is None:
        raise NotFound(f"sample {sample_id!r} is stats-only: the device sent no image")
    blob = session.get(SampleBlob, record.image_sha256)
    if blob is None:
        raise NotFound(f"the image of sample {sample_id!r} was deleted by retention")
    return blob.content


def accept_labels(session: Session, labels: Mapping[str, str | None], *, actor: str,
                  allowed: list[str] | None = None) -> int:
    """Apply ``{sample_id: label}``; ``None`` rejects a sample as unusable. Returns how many changed.

    Raises:
        LabelError: an unknown sample id, a stats-only sample, or a label outside ``allowed``.
    """
    records = {r.sample_id: r for r in session.exec(
        select(SampleRecord).where(col(SampleRecord.sample_id).in_(list(labels))))}
    missing = sorted(set(labels) - set(records))
    if missing:
        raise LabelError(f"unknown sample ids: {', '.join(missing[:10])}")
    now = utc_now()
    for sample_id, label in labels.items():
        record = records[sample_id]
        if record.stats_only:
            raise LabelError(f"sample {sample_id} is stats-only and cannot be labelled")
        if label is not None and allowed is not None and label not in allowed:
            raise LabelError(f"label {label!r} of sample {sample_id} is not one of {', '.join(allowed)}")
        record.label, record.status = label, "labelled" if label is not None else "rejected"
        record.labelled_by, record.labelled_at = actor[:128], now
        session.add(record)
    audit.record(session, actor=actor, action="samples.labelled", subject_type="samples",
                 subject_id=f"{len(labels)} samples",
                 details={"labelled": sum(1 for v in labels.values() if v is not None),
                          "rejected": sum(1 for v in labels.values() if v is None),
                          "sample_ids": sorted(labels)[:50]})
    session.commit()
    return len(labels)
