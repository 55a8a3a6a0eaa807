"""Monitoring and governance settings (env prefix ``EDGEFLEET_MONITOR_``), in one place."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class MonitorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EDGEFLEET_MONITOR_", extra="ignore")

    # Windows with fewer frames are stored but not tested (too little evidence).
    min_window_frames: int = Field(default=20, ge=1)
    # Each camera learns its own baseline from its first tested windows under a package;
    # once an operator confirms it, the camera's windows are tested against it.
    baseline_windows: int = Field(default=5, ge=2, le=1000)
    # The baseline's CUSUM allowance k: this many times the worst score of one baseline
    # window against the others (never below the package reference's k).
    baseline_k_margin: float = Field(default=1.5, ge=1.0)
    # An opened device alert opens (or joins) a retraining proposal.
    propose_retraining: bool = True
    # A validated retrained release is proposed as a canary rollout; approve it without a human?
    auto_approve_rollouts: bool = False
    # Random-stream samples (with an image) of the drifted devices that a retrained release's drift
    # reference is built from; a retraining waits until there are this many.
    min_reference_samples: int = Field(default=64, ge=8)
    # Retention.
    sample_retention_days: float = Field(default=30.0, gt=0)
    drift_window_retention_days: float = Field(default=90.0, gt=0)
    max_upload_bytes: int = Field(default=256 * 1024, gt=0)
