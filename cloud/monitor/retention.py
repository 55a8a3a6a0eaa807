"""Retention for samples and drift windows.

* Samples older than ``sample_retention_days``: unlabelled, rejected and stats-only
  ones are deleted with their images; labelled ones keep their record (lineage
  points at it) and lose their image only once a dataset version holds a copy.
* Drift windows older than ``drift_window_retention_days`` are downsampled, not
  dropped: the windows of one device, package and day merge into one (fixed-edge
  histograms add; means and spreads pool), so long-term history stays testable.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import delete
from sqlmodel import Session, col, select

from agent.contract.drift import decode_histograms, encode_histograms
from cloud.core.timestamps import utc_now
from cloud.governance.tables import DatasetLineage
from cloud.monitor.config import MonitorSettings
from cloud.monitor.tables import DriftWindowRecord, SampleBlob, SampleRecord

__all__ = ["apply_retention", "merge_windows"]

DOWNSAMPLED = "downsampled"


def merge_windows(windows: list[DriftWindowRecord]) -> DriftWindowRecord:
    """One record holding several windows of the same features: counts add, moments pool."""
    first = windows[0]
    features = len(first.features)
    counts = sum((decode_histograms(w.histograms, features) for w in windows), np.zeros((features, 32), dtype=np.int64))
    frames = np.asarray([w.frames for w in windows], dtype=np.float64)
    means = np.asarray([w.means for w in windows], dtype=np.float64)
    stds = np.asarray([w.stds for w in windows], dtype=np.float64)
    weight = frames[:, None] / frames.sum()
    mean = (weight * means).sum(axis=0)
    pooled = np.sqrt(np.maximum((weight * (stds**2 + means**2)).sum(axis=0) - mean**2, 0.0))
    classes = np.sum([w.class_counts for w in windows if len(w.class_counts) == len(first.class_counts)], axis=0)
    return DriftWindowRecord(
        message_id=f"{DOWNSAMPLED}-{first.message_id}"[:64], device_id=first.device_id, camera=first.camera,
        model_version=first.model_version, package_id=first.package_id, window_seq=first.window_seq,
        window_started_at=min(w.window_started_at for w in windows),
        window_ended_at=max(w.window_ended_at for w in windows), received_at=max(w.received_at for w in windows),
        frames=int(frames.sum()), frames_seen=sum(w.frames_seen for w in windows), features=list(first.features),
        histograms=encode_histograms(counts), means=[round(float(v), 6) for v in mean],
        stds=[round(float(v), 6) for v in pooled], class_counts=[int(c) for c in np.atleast_1d(classes)],
        tested=False, untested_reason=f"{DOWNSAMPLED}: {len(windows)} windows merged",
        evidence={"merged_window_ids": [w.id for w in windows][:1000]})


def apply_retention(session: Session, settings: MonitorSettings, now: datetime | None = None) -> dict[str, Any]:
    """Apply both policies once; returns what was done (for the API and the audit log)."""
    now = now or utc_now()
    sample_cutoff = now - timedelta(days=settings.sample_retention_days)
    in_datasets = {sid for row in session.exec(select(DatasetLineage)) for sid in row.sample_ids}
    old = list(session.exec(select(SampleRecord).where(col(SampleRecord.received_at) < sample_cutoff)))
    deleted, images_dropped = 0, 0
    dropped_blobs: set[str] = set()
    for sample in old:
        if sample.status == "labelled":
            if sample.sample_id in in_datasets and sample.image_sha256 is not None:
                dropped_blobs.add(sample.image_sha256)
                sample.image_sha256 = None
                session.add(sample)
                images_dropped += 1
            continue
        if sample.image_sha256 is not None:
            dropped_blobs.add(sample.image_sha256)
        session.delete(sample)
        deleted += 1
    session.flush()
    still_used = set(session.exec(select(SampleRecord.image_sha256).where(
        col(SampleRecord.image_sha256).in_(dropped_blobs)))) if dropped_blobs else set()
    removable = dropped_blobs - still_used
    if removable:
        session.execute(delete(SampleBlob).where(col(SampleBlob.sha256).in_(removable)))

    window_cutoff = now - timedelta(days=settings.drift_window_retention_days)
    # Per camera: a camera's windows describe its own scene and are never merged with another's.
    groups: dict[tuple[str, str | None, str | None, str, tuple[str, ...]], list[DriftWindowRecord]] = \
        defaultdict(list)
    for window in session.exec(select(DriftWindowRecord).where(col(DriftWindowRecord.received_at) < window_cutoff)):
        if window.untested_reason and window.untested_reason.startswith(DOWNSAMPLED):
            continue
        day = window.window_started_at.date().isoformat()
        groups[(window.device_id, window.camera, window.package_id, day, tuple(window.features))].append(window)
    merged = 0
    for windows in groups.values():
        if len(windows) < 2:
            continue
        session.add(merge_windows(windows))
        for window in windows:
            session.delete(window)
        merged += len(windows)
    session.commit()
    return {"samples_deleted": deleted, "sample_images_dropped": images_dropped, "blobs_deleted": len(removable),
            "windows_merged": merged, "windows_created": sum(1 for w in groups.values() if len(w) >= 2)}
