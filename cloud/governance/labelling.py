"""The labelling API's data access: list unlabelled samples, accept labels, read images.

Labellers are people or oracles (the synthetic generator in demos and tests); each
label records who gave it and when, each change of a label is kept in the sample's
label history (old -> new), and each batch is one audit event.

A label must be one of the classes of the model that made the sample's prediction:
a typo would otherwise become a class of its own in the next retraining.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlmodel import Session, col, select

from cloud.errors import InvalidInputError
from cloud.fleet.crud import NotFound
from cloud.fleet.tables import ModelVersion, Package, utc_now
from cloud.governance import audit
from cloud.governance.tables import SampleLabelChange
from cloud.monitor.tables import SampleBlob, SampleRecord

__all__ = ["LabelChange", "LabelError", "accept_labels", "get_sample", "label_history", "list_samples",
           "model_classes", "sample_image"]


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


def get_sample(session: Session, sample_id: str) -> SampleRecord:
    """Raises ``NotFound`` for an unknown sample id."""
    record = session.exec(select(SampleRecord).where(col(SampleRecord.sample_id) == sample_id)).first()
    if record is None:
        raise NotFound(f"sample {sample_id!r} does not exist; `edgefleet samples list --status ''` lists them")
    return record


def model_classes(session: Session, records: Iterable[SampleRecord]) -> dict[str, list[str]]:
    """``{sample_id: classes}`` of the model behind each sample (by model version, else by package).

    A sample whose model is unknown to the registry is missing from the answer: its
    classes cannot be checked.
    """
    records = list(records)
    versions = {r.model_version for r in records if r.model_version}
    package_ids = {r.package_id for r in records if r.package_id and not r.model_version}
    by_version: dict[str, list[str]] = {}
    if versions:
        by_version = {m.version: list(m.labels) for m in session.exec(
            select(ModelVersion).where(col(ModelVersion.version).in_(sorted(versions))))}
    version_of_package: dict[str, str] = {}
    if package_ids:
        version_of_package = {p.id: p.model_version for p in session.exec(
            select(Package).where(col(Package.id).in_(sorted(package_ids))))}
        missing = set(version_of_package.values()) - set(by_version)
        if missing:
            by_version.update({m.version: list(m.labels) for m in session.exec(
                select(ModelVersion).where(col(ModelVersion.version).in_(sorted(missing))))})
    classes: dict[str, list[str]] = {}
    for record in records:
        version = record.model_version or version_of_package.get(record.package_id or "")
        if version and by_version.get(version):
            classes[record.sample_id] = by_version[version]
    return classes


def label_history(session: Session, sample_id: str) -> list[SampleLabelChange]:
    """Every change of the sample's label, oldest first."""
    return list(session.exec(select(SampleLabelChange).where(col(SampleLabelChange.sample_id) == sample_id)
                             .order_by(col(SampleLabelChange.id))))


def sample_image(session: Session, sample_id: str) -> bytes:
    """The sample's JPEG. Raises ``NotFound`` for an unknown sample or a stats-only one."""
    record = get_sample(session, sample_id)
    if record.image_sha256 is None:
        raise NotFound(f"sample {sample_id!r} is stats-only: the device sent no image")
    blob = session.get(SampleBlob, record.image_sha256)
    if blob is None:
        raise NotFound(f"the image of sample {sample_id!r} was deleted by retention")
    return blob.content


@dataclass(frozen=True)
class LabelChange:
    """What one entry of a label batch did to its sample."""

    sample_id: str
    old_label: str | None
    new_label: str | None
    old_status: str
    new_status: str

    @property
    def relabelled(self) -> bool:
        """A sample that already had a (different) judgement: a label, or a rejection."""
        return self.old_status != "unlabelled" and (self.old_label, self.old_status) != (self.new_label,
                                                                                           self.new_status)

    @property
    def unchanged(self) -> bool:
        return (self.old_label, self.old_status) == (self.new_label, self.new_status)

    def as_dict(self) -> dict[str, Any]:
        return {"sample_id": self.sample_id, "from": self.old_label, "to": self.new_label,
                "from_status": self.old_status, "to_status": self.new_status, "relabelled": self.relabelled,
                "unchanged": self.unchanged}


def accept_labels(session: Session, labels: Mapping[str, str | None], *, actor: str,
                  allowed: list[str] | None = None) -> list[LabelChange]:
    """Apply ``{sample_id: label}``; ``None`` rejects a sample as unusable. Returns what each entry did.

    Every label is checked before any is applied: against ``allowed`` when given, else
    against the classes of the sample's model. Each change (not a repeat of the same
    label) is added to the sample's label history.

    Raises:
        LabelError: an unknown sample id, a stats-only sample, or a label that is not a class.
    """
    records = {r.sample_id: r for r in session.exec(
        select(SampleRecord).where(col(SampleRecord.sample_id).in_(list(labels))))}
    missing = sorted(set(labels) - set(records))
    if missing:
        raise LabelError(f"unknown sample ids: {', '.join(missing[:10])}")
    classes = model_classes(session, records.values())
    for sample_id, label in labels.items():
        record = records[sample_id]
        if record.stats_only:
            raise LabelError(f"sample {sample_id} is stats-only and cannot be labelled")
        valid = allowed if allowed is not None else classes.get(sample_id)
        if label is not None and valid is not None and label not in valid:
            model = f"model {record.model_version}" if record.model_version else "its model"
            raise LabelError(f"label {label!r} of sample {sample_id} is not a class of {model}; "
                             f"valid classes: {', '.join(valid)} (or an empty label to reject the sample)")
    now = utc_now()
    changes: list[LabelChange] = []
    for sample_id, label in labels.items():
        record = records[sample_id]
        change = LabelChange(sample_id=sample_id, old_label=record.label, new_label=label,
                             old_status=record.status, new_status="labelled" if label is not None else "rejected")
        changes.append(change)
        if change.unchanged:
            continue
        record.label, record.status = label, change.new_status
        record.labelled_by, record.labelled_at = actor[:128], now
        session.add(record)
        session.add(SampleLabelChange(sample_id=sample_id, at=now, actor=actor[:128], old_label=change.old_label,
                                      new_label=label, old_status=change.old_status, new_status=change.new_status))
    relabelled = [c for c in changes if c.relabelled]
    audit.record(session, actor=actor, action="samples.labelled", subject_type="samples",
                 subject_id=next(iter(labels)) if len(labels) == 1 else f"{len(labels)} samples",
                 details={"labelled": sum(1 for v in labels.values() if v is not None),
                          "rejected": sum(1 for v in labels.values() if v is None),
                          "relabelled": [{"sample_id": c.sample_id, "from": c.old_label, "to": c.new_label}
                                         for c in relabelled[:50]],
                          "labels": {k: labels[k] for k in sorted(labels)[:50]},
                          "sample_ids": sorted(labels)[:50]})
    session.commit()
    return changes
