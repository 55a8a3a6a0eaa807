"""The labelling API's data access: list unlabelled samples, accept labels, read images.

Labellers are people or oracles (the synthetic generator in demos and tests); each
label records who gave it and when, each change of a label is kept in the sample's
label history (old -> new), and each batch is one audit event.

A label must be one of the classes of the model that made the sample's prediction:
a typo would otherwise become a class of its own in the next retraining.

A sample of a detection package is labelled with its boxes instead of a class: a list
of ``{"label", "x1", "y1", "x2", "y2", "units"}`` (``units`` ``fraction``, the default,
or ``pixels`` of the source frame); an empty list says the frame holds no objects.
Every box must lie inside the frame, have an area and name a class of the model. The
boxes are kept in fractions of the frame (``SampleBoxLabel``); the sample's ``label``
holds a short summary of them, for lists and history.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from sqlmodel import Session, col, select

from cloud.core.timestamps import utc_now
from cloud.errors import InvalidInputError
from cloud.fleet.crud import NotFound
from cloud.fleet.tables import ModelVersion, Package
from cloud.governance import audit
from cloud.governance.tables import SampleBoxLabel, SampleLabelChange
from cloud.monitor.tables import SampleBlob, SampleRecord

__all__ = ["BoxLabel", "LabelChange", "LabelError", "LabelValue", "accept_labels", "box_labels", "box_summary",
           "check_box_labels", "get_sample", "label_history", "list_samples", "model_classes", "model_tasks",
           "sample_image"]

# A class name, None (reject the sample), or a detection sample's boxes.
LabelValue = str | None | Sequence[Mapping[str, Any]]


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


def _models_of(session: Session, records: Iterable[SampleRecord]) -> dict[str, ModelVersion]:
    """``{sample_id: model}`` of the model behind each sample (by model version, else by package)."""
    records = list(records)
    versions = {r.model_version for r in records if r.model_version}
    package_ids = {r.package_id for r in records if r.package_id and not r.model_version}
    by_version: dict[str, ModelVersion] = {}
    if versions:
        by_version = {m.version: m for m in session.exec(
            select(ModelVersion).where(col(ModelVersion.version).in_(sorted(versions))))}
    version_of_package: dict[str, str] = {}
    if package_ids:
        version_of_package = {p.id: p.model_version for p in session.exec(
            select(Package).where(col(Package.id).in_(sorted(package_ids))))}
        missing = set(version_of_package.values()) - set(by_version)
        if missing:
            by_version.update({m.version: m for m in session.exec(
                select(ModelVersion).where(col(ModelVersion.version).in_(sorted(missing))))})
    models: dict[str, ModelVersion] = {}
    for record in records:
        version = record.model_version or version_of_package.get(record.package_id or "")
        if version and version in by_version:
            models[record.sample_id] = by_version[version]
    return models


def model_classes(session: Session, records: Iterable[SampleRecord]) -> dict[str, list[str]]:
    """``{sample_id: classes}`` of the model behind each sample (by model version, else by package).

    A sample whose model is unknown to the registry is missing from the answer: its
    classes cannot be checked.
    """
    return {sample_id: list(model.labels) for sample_id, model in _models_of(session, records).items()
            if model.labels}


def model_tasks(session: Session, records: Iterable[SampleRecord]) -> dict[str, str]:
    """``{sample_id: "detection" | "classification"}`` for the samples whose model is in the registry."""
    return {sample_id: "detection" if _is_detection(model) else "classification"
            for sample_id, model in _models_of(session, records).items()}


def _is_detection(model: ModelVersion | None) -> bool:
    return model is not None and (model.hyperparameters or {}).get("task") == "detection"


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
class BoxLabel:
    """One labelled object: its class and its box in fractions of the frame (0-1)."""

    label: str
    x1: float
    y1: float
    x2: float
    y2: float

    def as_dict(self) -> dict[str, Any]:
        return {"label": self.label, "x1": self.x1, "y1": self.y1, "x2": self.x2, "y2": self.y2}


BOX_UNITS = ("fraction", "pixels")
# A box edge may overshoot the frame by this much (fractions), from rounding in a labelling tool.
_EDGE_SLACK = 1e-6


def check_box_labels(sample_id: str, boxes: Sequence[Mapping[str, Any]], *, width: int, height: int,
                     classes: list[str] | None) -> list[BoxLabel]:
    """Validate one sample's boxes and return them in fractions of the frame (rounded to 1e-6).

    ``width`` and ``height`` are the source frame's pixels (needed for ``units: pixels``);
    ``classes`` the model's (``None``: unknown, not checked). An empty list is valid: no objects.

    Raises:
        LabelError: naming the sample, the box (by position) and what to fix.
    """
    checked: list[BoxLabel] = []
    for index, box in enumerate(boxes):
        where = f"box {index} of sample {sample_id}"
        if not isinstance(box, Mapping):
            raise LabelError(f"{where} must be an object with label, x1, y1, x2, y2 (and units)")
        unknown = sorted(set(box) - {"label", "x1", "y1", "x2", "y2", "units"})
        if unknown:
            raise LabelError(f"{where} has unknown fields {', '.join(unknown)}; use label, x1, y1, x2, y2, units")
        label = box.get("label")
        if not isinstance(label, str) or not label:
            raise LabelError(f"{where} needs a class name in 'label'")
        if classes is not None and label not in classes:
            raise LabelError(f"{where}: {label!r} is not a class of its model; valid classes: {', '.join(classes)}")
        units = box.get("units", "fraction")
        if units not in BOX_UNITS:
            raise LabelError(f"{where}: units must be 'fraction' (0-1 of the frame) or 'pixels', not {units!r}")
        try:
            x1, y1, x2, y2 = (float(box[k]) for k in ("x1", "y1", "x2", "y2"))
        except (KeyError, TypeError, ValueError):
            raise LabelError(f"{where} needs numbers x1, y1, x2, y2 (the top-left and bottom-right corners)") from None
        if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
            raise LabelError(f"{where} has a coordinate that is not a finite number")
        if units == "pixels":
            if width <= 0 or height <= 0:
                raise LabelError(f"{where} is in pixels but the frame size of sample {sample_id} is unknown; "
                                 "give the box in fractions of the frame")
            x1, x2, y1, y2 = x1 / width, x2 / width, y1 / height, y2 / height
        size = f"{width}x{height} pixels" if width > 0 and height > 0 else "0-1 in fractions"
        if min(x1, y1) < -_EDGE_SLACK or max(x2, y2) > 1 + _EDGE_SLACK:
            raise LabelError(f"{where} ({box.get('x1')}, {box.get('y1')}, {box.get('x2')}, {box.get('y2')} "
                             f"in {units}) lies outside the frame ({size}); clip it to the frame")
        if x2 <= x1 or y2 <= y1:
            raise LabelError(f"{where} has no area: it needs x2 > x1 and y2 > y1 "
                             f"(got x1={box.get('x1')}, x2={box.get('x2')}, y1={box.get('y1')}, y2={box.get('y2')})")
        checked.append(BoxLabel(label, _clip(x1), _clip(y1), _clip(x2), _clip(y2)))
    return checked


def _clip(fraction: float) -> float:
    return round(min(1.0, max(0.0, fraction)), 6)


def box_summary(boxes: Sequence[BoxLabel]) -> str:
    """The sample's ``label`` for a box label: ``no objects`` or ``3 objects: circle 2, square 1``."""
    if not boxes:
        return "no objects"
    counts: dict[str, int] = {}
    for box in boxes:
        counts[box.label] = counts.get(box.label, 0) + 1
    summary = f"{len(boxes)} object{'s' if len(boxes) != 1 else ''}: " + ", ".join(
        f"{name} {count}" for name, count in sorted(counts.items()))
    return summary if len(summary) <= 256 else summary[:253] + "..."


def box_labels(session: Session, sample_ids: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
    """``{sample_id: boxes}`` of the samples labelled with boxes (fractions of the frame)."""
    ids = sorted(set(sample_ids))
    if not ids:
        return {}
    return {row.sample_id: list(row.boxes) for row in session.exec(
        select(SampleBoxLabel).where(col(SampleBoxLabel.sample_id).in_(ids)))}


def _frame_size(session: Session, record: SampleRecord) -> tuple[int, int]:
    """The sample's frame size as the device reported it, else read from its stored JPEG (0, 0 if neither)."""
    if record.image_width > 0 and record.image_height > 0:
        return record.image_width, record.image_height
    blob = session.get(SampleBlob, record.image_sha256) if record.image_sha256 else None
    image = cv2.imdecode(np.frombuffer(blob.content, dtype=np.uint8), cv2.IMREAD_COLOR) if blob else None
    return (int(image.shape[1]), int(image.shape[0])) if image is not None else (0, 0)


@dataclass(frozen=True)
class LabelChange:
    """What one entry of a label batch did to its sample (``*_boxes``: detection samples only)."""

    sample_id: str
    old_label: str | None
    new_label: str | None
    old_status: str
    new_status: str
    old_boxes: list[dict[str, Any]] | None = None
    new_boxes: list[dict[str, Any]] | None = None

    @property
    def relabelled(self) -> bool:
        """A sample that already had a (different) judgement: a label, or a rejection."""
        return self.old_status != "unlabelled" and not self.unchanged

    @property
    def unchanged(self) -> bool:
        return (self.old_label, self.old_status, self.old_boxes) == (self.new_label, self.new_status, self.new_boxes)

    def as_dict(self) -> dict[str, Any]:
        answer: dict[str, Any] = {"sample_id": self.sample_id, "from": self.old_label, "to": self.new_label,
                                  "from_status": self.old_status, "to_status": self.new_status, "relabelled": self.relabelled,
                                  "unchanged": self.unchanged}
        if self.old_boxes is not None or self.new_boxes is not None:
            answer.update({"from_boxes": self.old_boxes, "to_boxes": self.new_boxes})
        return answer


def accept_labels(session: Session, labels: Mapping[str, LabelValue], *, actor: str,
                  allowed: list[str] | None = None) -> list[LabelChange]:
    """Apply ``{sample_id: label}``; ``None`` rejects a sample as unusable. Returns what each entry did.

    A sample of a classifier takes a class name; a sample of a detection package takes a
    list of boxes (see :func:`check_box_labels`; ``[]`` = no objects). Every label is
    checked before any is applied: against ``allowed`` when given, else against the
    classes of the sample's model. Each change (not a repeat of the same label) is added
    to the sample's label history.

    Raises:
        LabelError: an unknown sample id, a stats-only sample, a label that is not a class, a class name
            for a detection sample (or boxes for a classifier's), or a box that is outside the frame,
            has no area or names no class of the model.
    """
    records = {r.sample_id: r for r in session.exec(
        select(SampleRecord).where(col(SampleRecord.sample_id).in_(list(labels))))}
    missing = sorted(set(labels) - set(records))
    if missing:
        raise LabelError(f"unknown sample ids: {', '.join(missing[:10])}")
    models = _models_of(session, records.values())
    checked_boxes: dict[str, list[BoxLabel]] = {}
    for sample_id, label in labels.items():
        record = records[sample_id]
        if record.stats_only:
            raise LabelError(f"sample {sample_id} is stats-only and cannot be labelled")
        model = models.get(sample_id)
        valid = allowed if allowed is not None else (list(model.labels) if model and model.labels else None)
        model_name = f"model {record.model_version}" if record.model_version else "its model"
        if label is None:
            continue
        if isinstance(label, str):
            if _is_detection(model):
                raise LabelError(f"sample {sample_id} is from detection {model_name}: label it with a list of boxes "
                                 '([{"label": ..., "x1": ..., "y1": ..., "x2": ..., "y2": ...}], [] for no objects), '
                                 "not a class name")
            if valid is not None and label not in valid:
                raise LabelError(f"label {label!r} of sample {sample_id} is not a class of {model_name}; "
                                 f"valid classes: {', '.join(valid)} (or an empty label to reject the sample)")
            continue
        if model is not None and not _is_detection(model):
            raise LabelError(f"sample {sample_id} is from classifier {model_name}: label it with one class name, "
                             "not boxes")
        width, height = _frame_size(session, record)
        checked_boxes[sample_id] = check_box_labels(sample_id, label, width=width, height=height, classes=valid)
    current_boxes = box_labels(session, [s for s in labels if s in checked_boxes or _is_detection(models.get(s))])
    now = utc_now()
    changes: list[LabelChange] = []
    for sample_id, label in labels.items():
        record = records[sample_id]
        detection = sample_id in checked_boxes or sample_id in current_boxes
        new_boxes = [b.as_dict() for b in checked_boxes[sample_id]] if sample_id in checked_boxes else None
        new_label = box_summary(checked_boxes[sample_id]) if sample_id in checked_boxes else label
        assert new_label is None or isinstance(new_label, str)
        change = LabelChange(sample_id=sample_id, old_label=record.label, new_label=new_label,
                             old_status=record.status, new_status="labelled" if label is not None else "rejected",
                             old_boxes=current_boxes.get(sample_id) if detection else None,
                             new_boxes=new_boxes)
        changes.append(change)
        if change.unchanged:
            continue
        record.label, record.status = new_label, change.new_status
        record.labelled_by, record.labelled_at = actor[:128], now
        session.add(record)
        if detection:
            row = session.get(SampleBoxLabel, sample_id)
            if new_boxes is None:
                if row is not None:
                    session.delete(row)
            else:
                row = row or SampleBoxLabel(sample_id=sample_id)
                row.boxes, row.labelled_by, row.labelled_at = new_boxes, actor[:128], now
                session.add(row)
        session.add(SampleLabelChange(sample_id=sample_id, at=now, actor=actor[:128], old_label=change.old_label,
                                      new_label=new_label, old_status=change.old_status, new_status=change.new_status,
                                      old_boxes=change.old_boxes, new_boxes=change.new_boxes))
    relabelled = [c for c in changes if c.relabelled]
    audit.record(session, actor=actor, action="samples.labelled", subject_type="samples",
                 subject_id=next(iter(labels)) if len(labels) == 1 else f"{len(labels)} samples",
                 details={"labelled": sum(1 for v in labels.values() if v is not None),
                          "rejected": sum(1 for v in labels.values() if v is None),
                          "relabelled": [{"sample_id": c.sample_id, "from": c.old_label, "to": c.new_label}
                                         for c in relabelled[:50]],
                          "labels": {c.sample_id: c.new_label for c in sorted(changes, key=lambda c: c.sample_id)[:50]},
                          "boxes": {c.sample_id: c.new_boxes for c in sorted(changes, key=lambda c: c.sample_id)[:50]
                                    if c.new_boxes is not None},
                          "sample_ids": sorted(labels)[:50]})
    session.commit()
    return changes
