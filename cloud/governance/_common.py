"""What both retraining paths (classifiers, detectors) share: their settings and how a proposal fails."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlmodel import Session

from cloud.core.timestamps import utc_now
from cloud.governance import audit
from cloud.governance.tables import RetrainingProposal
from cloud.pipeline.evaluate.detection_gates import DetectionThresholds

__all__ = ["MIN_REFERENCE_SAMPLES", "RetrainSettings", "fail"]

MIN_REFERENCE_SAMPLES = 64


@dataclass(frozen=True)
class RetrainSettings:
    datasets_dir: Path
    models_dir: Path
    packages_dir: Path
    hardware_profiles: tuple[str, ...] = ("x86-64-avx2",)
    epochs: int = 6
    seed: int = 0
    # The new model may lose at most this much accuracy on the old test set.
    tolerance: float = 0.02
    # ... and must gain at least this much on the new drifted data.
    min_gain: float = 0.0
    reference_window_frames: int = 40
    auto_approve: bool = False
    # Random-stream samples the new release's drift reference is built from (EDGEFLEET_MONITOR_MIN_REFERENCE_SAMPLES).
    min_reference_samples: int = MIN_REFERENCE_SAMPLES
    # Detection packages: the build work directories (default: ``builds`` next to ``models_dir``),
    # the epochs (default: the base detector's own) and the new detector's validation gate
    # (default: the thresholds the base detector passed). ``tolerance`` and ``min_gain`` apply to mAP@0.5.
    builds_dir: Path | None = None
    detector_epochs: int | None = None
    detection_thresholds: DetectionThresholds | None = None


def fail(session: Session, proposal: RetrainingProposal, actor: str, reason: str, numbers: dict[str, Any]) -> None:
    proposal.state, proposal.validation, proposal.updated_at = "rejected", {**numbers, "reason": reason}, utc_now()
    session.add(proposal)
    audit.record(session, actor=actor, action="retraining.rejected", subject_type="retraining_proposal",
                 subject_id=proposal.id, details={**numbers, "reason": reason})
    session.commit()
