"""Retention: old samples go (with their images) unless labelled; old windows merge, never vanish."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
from sqlmodel import Session, SQLModel, create_engine, select

from agent.contract.drift import decode_histograms, encode_histograms
from cloud.governance.tables import DatasetLineage
from cloud.monitor.config import MonitorSettings
from cloud.monitor.retention import apply_retention
from cloud.monitor.tables import DriftWindowRecord, SampleBlob, SampleRecord

NOW = datetime(2026, 6, 1, tzinfo=UTC)


def window(i: int, day: int, frames: int, value: float) -> DriftWindowRecord:
    counts = np.zeros((2, 32), dtype=np.int64)
    counts[:, i % 32] = frames
    at = NOW - timedelta(days=day)
    return DriftWindowRecord(message_id=f"w{i}", device_id="cam-1", package_id="p1", window_started_at=at,
                             window_ended_at=at, received_at=at, frames=frames, frames_seen=frames,
                             features=["a", "b"], histograms=encode_histograms(counts), means=[value, 1.0],
                             stds=[1.0, 0.0], class_counts=[frames, 0])


def sample(sid: str, days: int, status: str, sha: str | None) -> SampleRecord:
    at = NOW - timedelta(days=days)
    return SampleRecord(message_id=f"m-{sid}", sample_id=sid, device_id="cam-1", sampler="random", captured_at=at,
                        received_at=at, status=status, image_sha256=sha)


def test_retention_deletes_keeps_and_downsamples(tmp_path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'r.db'}")
    SQLModel.metadata.create_all(engine, tables=[SampleRecord.__table__, SampleBlob.__table__,
                                                 DriftWindowRecord.__table__, DatasetLineage.__table__])
    with Session(engine) as session:
        for sha in ("a" * 64, "b" * 64, "c" * 64, "d" * 64):
            session.add(SampleBlob(sha256=sha, device_id="cam-1", content=b"\xff\xd8", size_bytes=2))
        session.add_all([sample("old-unlabelled", 40, "unlabelled", "a" * 64),
                         sample("old-in-dataset", 40, "labelled", "b" * 64),
                         sample("old-labelled", 40, "labelled", "c" * 64),
                         sample("fresh", 1, "unlabelled", "d" * 64)])
        session.add(DatasetLineage(dataset_id="ds-1", sample_ids=["old-in-dataset"], created_by="test"))
        session.add_all([window(0, 100, 10, 1.0), window(1, 100, 30, 3.0), window(2, 100, 5, 2.0),
                         window(3, 120, 10, 0.0), window(4, 1, 10, 0.0)])
        session.commit()
        done = apply_retention(session, MonitorSettings(sample_retention_days=30, drift_window_retention_days=90),
                               now=NOW)
        assert done["samples_deleted"] == 1 and done["sample_images_dropped"] == 1 and done["blobs_deleted"] == 2
        left = {s.sample_id: s.image_sha256 for s in session.exec(select(SampleRecord))}
        assert left == {"old-in-dataset": None, "old-labelled": "c" * 64, "fresh": "d" * 64}
        assert {b.sha256[0] for b in session.exec(select(SampleBlob))} == {"c", "d"}
        windows = list(session.exec(select(DriftWindowRecord)))
        assert len(windows) == 3 and done["windows_merged"] == 3
        merged = next(w for w in windows if w.untested_reason and "merged" in w.untested_reason)
        assert merged.frames == 45 and merged.class_counts == [45, 0]
        assert merged.means[0] == round((10 * 1 + 30 * 3 + 5 * 2) / 45, 6)
        counts = decode_histograms(merged.histograms, 2)
        assert counts.sum(axis=1).tolist() == [45, 45]
        again = apply_retention(session, MonitorSettings(sample_retention_days=30, drift_window_retention_days=90),
                                now=NOW)
        assert again["windows_merged"] == 0 and again["samples_deleted"] == 0


def test_old_windows_of_two_cameras_merge_per_camera(tmp_path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'r.db'}")
    SQLModel.metadata.create_all(engine, tables=[SampleRecord.__table__, SampleBlob.__table__,
                                                 DriftWindowRecord.__table__, DatasetLineage.__table__])
    with Session(engine) as session:
        # One device, one day, two cameras: each camera's scene is its own population.
        for i, (camera, frames) in enumerate((("door", 10), ("door", 20), ("yard", 5), ("yard", 7))):
            record = window(i, 100, frames, 1.0)
            record.camera = camera
            session.add(record)
        session.commit()
        done = apply_retention(session, MonitorSettings(drift_window_retention_days=90), now=NOW)
        assert done["windows_merged"] == 4 and done["windows_created"] == 2
        merged = {w.camera: w.frames for w in session.exec(select(DriftWindowRecord))}
        assert merged == {"door": 30, "yard": 12}
