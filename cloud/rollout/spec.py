"""The rollout spec: what an operator submits (API body, CLI YAML file).

Every limit is configuration with its unit in the name and a documented default.
Defaults follow the conventions of Eclipse hawkBit and AWS IoT Jobs where those
exist (docs/rollouts.md) and are stricter where we gate on model quality.
Validation errors are ``ValueError``s (pydantic ``ValidationError``) whose message
says which field to fix.
"""

from __future__ import annotations

from datetime import datetime, time
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agent.contract import validate_device_id
from cloud.errors import InvalidInputError

__all__ = [
    "GateThresholds",
    "MaintenanceWindow",
    "ReleaseSpec",
    "RolloutSpec",
    "ShadowSpec",
    "SpecError",
    "StageSpec",
    "TargetSelector",
    "Timeouts",
    "load_spec",
    "parse_spec",
]

Label = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:/=-]*$")]
PackageId = Annotated[str, Field(min_length=1, max_length=64)]


class SpecError(InvalidInputError):
    """A rollout spec that cannot be used; the message says what to fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ReleaseSpec(_Strict):
    """The release: one package for every hardware profile, or one per profile."""

    package_id: PackageId | None = None
    # hardware profile -> package id; a profile listed here overrides ``package_id``.
    packages: dict[str, PackageId] = Field(default_factory=dict, max_length=64)

    @model_validator(mode="after")
    def _one_package_at_least(self) -> ReleaseSpec:
        if self.package_id is None and not self.packages:
            raise ValueError("release needs package_id or packages (hardware profile -> package id)")
        return self

    def package_for(self, hardware_profile: str) -> str | None:
        return self.packages.get(hardware_profile, self.package_id)

    def package_ids(self) -> set[str]:
        ids = set(self.packages.values())
        if self.package_id is not None:
            ids.add(self.package_id)
        return ids


class TargetSelector(_Strict):
    """Which devices the rollout targets.

    ``device_ids`` are always included. The other criteria narrow the whole fleet:
    a device must carry every tag in ``tags``, be in one of ``groups`` (if any) and
    have one of ``hardware_profiles`` (if any). ``all_devices`` selects the fleet.
    """

    all_devices: bool = False
    tags: list[Label] = Field(default_factory=list, max_length=32)
    groups: list[Label] = Field(default_factory=list, max_length=32)
    hardware_profiles: list[Label] = Field(default_factory=list, max_length=32)
    device_ids: list[str] = Field(default_factory=list, max_length=100_000)

    @field_validator("device_ids")
    @classmethod
    def _valid_ids(cls, values: list[str]) -> list[str]:
        if len(set(values)) != len(values):
            raise ValueError("device_ids lists a device twice")
        return [validate_device_id(v) for v in values]

    @model_validator(mode="after")
    def _says_something(self) -> TargetSelector:
        if not (self.all_devices or self.tags or self.groups or self.hardware_profiles or self.device_ids):
            raise ValueError("target selects nothing: set all_devices: true, or tags, groups, hardware_profiles or device_ids")
        return self

    @property
    def filters_fleet(self) -> bool:
        return self.all_devices or bool(self.tags or self.groups or self.hardware_profiles)


class StageSpec(_Strict):
    """One canary stage. Sizes are cumulative: the share of the target reached by the end of it.

    ``percent`` is a share of the target (e.g. 1, 10, 50, 100); ``count`` a number of
    devices. Every stratum contributes at least one device to the first stage, so a
    stage can be larger than ``count`` when the target has more strata than that.
    """

    percent: float | None = Field(default=None, gt=0, le=100)
    count: int | None = Field(default=None, ge=1)
    min_count: int = Field(default=1, ge=1)
    soak_s: float | None = Field(default=None, ge=0, description="None: the rollout's soak_s")
    require_approval: bool = Field(default=False, description="pause for an operator after this stage passes")

    @model_validator(mode="after")
    def _size_given_once(self) -> StageSpec:
        if (self.percent is None) == (self.count is None):
            raise ValueError("a stage needs exactly one of percent or count")
        return self


class Timeouts(_Strict):
    """Every non-final device state has a deadline (AWS IoT Jobs' in-progress timeout, per state).

    A timed-out device is retried (``RolloutSpec.max_retries``) and then counted as failed,
    except while it is offline before receiving the command: that is counted apart.
    """

    queued_s: float = Field(default=600, gt=0, description="command sent, no acknowledgement yet")
    downloading_s: float = Field(default=1800, gt=0, description="received / downloading / verifying")
    installing_s: float = Field(default=600, gt=0, description="installing, loading and self-testing")
    probation_s: float = Field(default=900, gt=0, description="installed, waiting for healthy telemetry")
    rollback_s: float = Field(default=1800, gt=0, description="rollback command sent, not confirmed")
    offline_expiry_s: float = Field(default=7 * 86400, gt=0, description="offline device gives up after this")


class MaintenanceWindow(_Strict):
    """Dispatch only inside this window (UTC). ``end`` before ``start`` wraps past midnight."""

    start: time
    end: time
    # ISO weekdays, Monday = 1; empty = every day (the day the window starts on).
    weekdays: list[int] = Field(default_factory=list, max_length=7)

    @field_validator("weekdays")
    @classmethod
    def _iso_days(cls, values: list[int]) -> list[int]:
        if any(v < 1 or v > 7 for v in values):
            raise ValueError("weekdays are ISO numbers 1 (Monday) to 7 (Sunday)")
        return values

    def contains(self, moment: datetime) -> bool:
        clock = moment.time().replace(tzinfo=None)
        day = moment.isoweekday()
        if self.start <= self.end:
            return self.start <= clock < self.end and (not self.weekdays or day in self.weekdays)
        # Wraps midnight: the part after midnight belongs to the previous day's window.
        if clock >= self.start:
            return not self.weekdays or day in self.weekdays
        if clock < self.end:
            previous_day = 7 if day == 1 else day - 1
            return not self.weekdays or previous_day in self.weekdays
        return False


class ShadowSpec(_Strict):
    """On-device shadow phase: the candidate runs beside the active model before any switch."""

    duration_s: float = Field(default=300, gt=0, description="how long devices shadow before the gate")
    sample_fraction: float = Field(default=0.25, gt=0, le=1, description="share of frames also run by the candidate")
    stages: list[int] = Field(default_factory=lambda: [0], description="stage indexes that shadow first")
    min_frames: int = Field(default=200, ge=1, description="shadowed frames per stratum before judging")
    min_agreement: float = Field(default=0.9, ge=0, le=1, description="top-1 agreement with the active model "
                                 "(detection: share of boxes matched at IoU >= 0.5 with the same class)")
    max_latency_ratio: float = Field(default=2.0, gt=0, description="candidate p95 / active p95")
    max_error_rate: float = Field(default=0.01, ge=0, le=1, description="candidate errors per shadowed frame")


class GateThresholds(_Strict):
    """Gate thresholds per stratum, canaries against the control group (or baseline).

    A gate with fewer samples than its minimum is "insufficient": the stage waits,
    and pauses for approval after ``gate_wait_s`` rather than promote on no evidence.
    """

    # Install outcome (hawkBit's error threshold, AWS thresholdPercentage + minNumberOfExecutedThings).
    min_install_outcomes: int = Field(default=1, ge=1)
    max_install_failure_rate: float = Field(default=0.2, ge=0, le=1)
    # Runtime health.
    min_frames: int = Field(default=200, ge=1, description="frames per group for rate and quality gates")
    max_error_rate: float = Field(default=0.05, ge=0, le=1, description="absolute cap on errors per frame")
    max_error_rate_increase: float = Field(default=0.01, ge=0, le=1, description="canary minus control")
    max_restart_rate_increase: float = Field(default=0.25, ge=0, description="restarts per device, canary minus control")
    min_latency_windows: int = Field(default=3, ge=1)
    max_p95_latency_ratio: float = Field(default=1.5, gt=0, description="median canary p95 / median control p95")
    # A ratio of two sub-millisecond p95s is scheduling noise on a shared host (0.6 against
    # 1.1 ms reads as 1.9x): the canary fails on latency only when it is also this much slower.
    min_p95_latency_increase_ms: float = Field(
        default=2.0, ge=0, description="canary median p95 minus control median p95 that counts as slower")
    # Model quality.
    max_confidence_drop: float = Field(default=0.15, ge=0, le=1, description="control mean minus canary mean")
    class_distribution_alpha: float = Field(default=0.001, gt=0, lt=1, description="chi-square significance")
    # Consecutive frames are correlated, so with many frames any shift is "significant";
    # we also require a material effect (total variation distance between distributions).
    class_distribution_min_tvd: float = Field(default=0.15, ge=0, le=1)
    # Consecutive camera frames mostly repeat the same scene (docs/drift.md), so frame
    # counts overstate the evidence: the chi-square counts one independent sample per this
    # many frames (about one per second at 10 fps). Use 1 for independent frames.
    frames_per_independent_sample: float = Field(default=10.0, ge=1)
    # The engine looks at the gates on every tick. Before the soak is over (or while devices
    # still install) a look is "interim" and the chi-square needs alpha times this fraction, so
    # repeated looks do not add up to false alarms (the O'Brien-Fleming idea, simplified);
    # a gross shift still stops the stage at once.
    interim_alpha_fraction: float = Field(default=0.01, gt=0, le=1)
    # Detection packages (instead of confidence and class distribution): relative change of
    # boxes per frame and of each class's objects per frame, canary against control, in either
    # direction (fewer objects is lost recall, more is false alarms), significant at
    # class_distribution_alpha; and the drop of the mean box score.
    max_boxes_per_frame_change: float = Field(default=0.25, ge=0, description="|canary / control - 1|")
    max_class_count_per_frame_change: float = Field(default=0.4, ge=0, description="|canary / control - 1| per class")
    max_box_score_drop: float = Field(default=0.1, ge=0, le=1, description="control mean minus canary mean")
    # Drift score = -log10 of a drift window's adjusted p-value (cloud/monitor), when devices report drift.
    max_drift_score_increase: float = Field(default=2.0, ge=0, description="median canary minus median control")
    min_drift_windows: int = Field(default=3, ge=1)
    # Time to collect the minimum samples after the soak, before pausing for approval.
    gate_wait_s: float = Field(default=1800, ge=0)
    # Telemetry lookback for the control group before the stage started.
    control_window_s: float = Field(default=900, gt=0)
    # Telemetry windows a device must report on the new version to leave probation.
    probation_min_windows: int = Field(default=2, ge=1)


class RolloutSpec(_Strict):
    name: Annotated[str, Field(min_length=1, max_length=128)]
    release: ReleaseSpec
    target: TargetSelector
    stages: list[StageSpec] = Field(
        default_factory=lambda: [StageSpec(percent=1), StageSpec(percent=10), StageSpec(percent=50),
                                 StageSpec(percent=100)],
        min_length=1, max_length=20,
    )
    soak_s: float = Field(default=900, ge=0, description="default soak time per stage")
    # AWS IoT Jobs allows at most 1000 devices a minute; we default far above that.
    dispatch_rate_per_s: float = Field(default=100, gt=0, le=100_000)
    max_retries: int = Field(default=2, ge=0, le=20)
    timeouts: Timeouts = Field(default_factory=Timeouts)
    maintenance_windows: list[MaintenanceWindow] = Field(default_factory=list, max_length=32)
    shadow: ShadowSpec | None = None
    gates: GateThresholds = Field(default_factory=GateThresholds)
    stratify_by: list[Literal["hardware_profile", "runtime"]] = Field(
        default_factory=lambda: ["hardware_profile", "runtime"]  # type: ignore[arg-type]
    )
    # What a failed gate in one stratum does: stop that stratum (roll it back) and let
    # the others continue, or abort the whole rollout. All strata failing always aborts.
    on_gate_failure: Literal["halt_stratum", "abort"] = "halt_stratum"
    seed: int = Field(default=0, description="orders devices inside a stratum; same seed, same plan")

    @model_validator(mode="after")
    def _stages_grow(self) -> RolloutSpec:
        last_percent = 0.0
        last_count = 0
        for index, stage in enumerate(self.stages):
            if stage.percent is not None:
                if stage.percent < last_percent:
                    raise ValueError(f"stages[{index}].percent {stage.percent} is below an earlier stage; sizes are cumulative")
                last_percent = stage.percent
            if stage.count is not None:
                if stage.count < last_count:
                    raise ValueError(f"stages[{index}].count {stage.count} is below an earlier stage; sizes are cumulative")
                last_count = stage.count
        if self.shadow is not None:
            bad = [i for i in self.shadow.stages if i < 0 or i >= len(self.stages)]
            if bad:
                raise ValueError(f"shadow.stages {bad} are not stage indexes (0..{len(self.stages) - 1})")
        return self

    def stage_soak_s(self, index: int) -> float:
        soak = self.stages[index].soak_s
        return self.soak_s if soak is None else soak

    def shadows_stage(self, index: int) -> bool:
        return self.shadow is not None and index in self.shadow.stages

    def in_maintenance_window(self, moment: datetime) -> bool:
        return not self.maintenance_windows or any(w.contains(moment) for w in self.maintenance_windows)


def _describe(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error["loc"]) or "spec"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


def parse_spec(document: Any) -> RolloutSpec:
    """Validate a spec document (a dict from JSON or YAML). Raises ``SpecError``."""
    if not isinstance(document, dict):
        raise SpecError("a rollout spec is a mapping with name, release, target and stages")
    try:
        return RolloutSpec.model_validate(document)
    except ValidationError as exc:
        raise SpecError(f"invalid rollout spec: {_describe(exc)}") from exc


def load_spec(path: Path) -> RolloutSpec:
    """Read a YAML (or JSON) spec file. Raises ``SpecError`` saying what to fix."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError(f"cannot read spec file {path}: {exc.strerror}") from exc
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpecError(f"{path} is not valid YAML: {exc}") from exc
    return parse_spec(document)

