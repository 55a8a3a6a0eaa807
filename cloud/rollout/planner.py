"""Pure planning: which devices a spec targets, their strata, and the stage of each.

No database, no broker: the engine and ``edgefleet rollout plan`` feed it facts.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from cloud.errors import InvalidInputError
from cloud.rollout.spec import RolloutSpec, StageSpec

__all__ = ["DeviceFacts", "Plan", "PlanError", "PlannedDevice", "plan_rollout", "select_targets", "stratum_of"]

NO_RUNTIME = "none"


class PlanError(InvalidInputError):
    """The spec cannot be planned against this fleet; the message says why."""

    def __str__(self) -> str:
        return f"cannot plan this rollout: {super().__str__()}"


@dataclass(frozen=True)
class DeviceFacts:
    """What the planner knows about a device."""

    device_id: str
    hardware_profile: str
    runtime: str | None = None
    online: bool = True
    tags: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()
    running_package_id: str | None = None
    running_model_version: str | None = None


@dataclass(frozen=True)
class PlannedDevice:
    device_id: str
    stratum: str
    stage: int
    package_id: str
    online: bool
    previous_package_id: str | None
    previous_model_version: str | None


@dataclass
class Plan:
    devices: list[PlannedDevice]
    # stratum -> devices in it (targeted and planned)
    strata: dict[str, int]
    # cumulative devices per stage, per stratum: stage_sizes[stage][stratum]
    stage_sizes: list[dict[str, int]]
    # device id -> why it is targeted but left out
    skipped: dict[str, str] = field(default_factory=dict)

    def stage_devices(self, stage: int) -> list[PlannedDevice]:
        return [d for d in self.devices if d.stage == stage]

    def as_dict(self) -> dict[str, object]:
        return {
            "strata": self.strata,
            "stages": [
                {
                    "stage": index,
                    "cumulative_per_stratum": sizes,
                    "devices": sorted(d.device_id for d in self.stage_devices(index)),
                    "offline": sorted(d.device_id for d in self.stage_devices(index) if not d.online),
                }
                for index, sizes in enumerate(self.stage_sizes)
            ],
            "skipped": self.skipped,
        }


def stratum_of(device: DeviceFacts, stratify_by: list[str]) -> str:
    parts = []
    for dimension in stratify_by:
        if dimension == "hardware_profile":
            parts.append(device.hardware_profile)
        elif dimension == "runtime":
            parts.append(device.runtime or NO_RUNTIME)
    return "/".join(parts) or "all"


def select_targets(spec: RolloutSpec, fleet: list[DeviceFacts]) -> tuple[list[DeviceFacts], list[str]]:
    """Devices the target selector picks, and explicit ids that are not in the fleet."""
    selector = spec.target
    by_id = {d.device_id: d for d in fleet}
    chosen: dict[str, DeviceFacts] = {}
    if selector.filters_fleet:
        for device in fleet:
            if selector.tags and not set(selector.tags) <= device.tags:
                continue
            if selector.groups and not set(selector.groups) & device.groups:
                continue
            if selector.hardware_profiles and device.hardware_profile not in selector.hardware_profiles:
                continue
            chosen[device.device_id] = device
    missing = []
    for device_id in selector.device_ids:
        if device_id in by_id:
            chosen[device_id] = by_id[device_id]
        else:
            missing.append(device_id)
    return sorted(chosen.values(), key=lambda d: d.device_id), missing


def _order_key(seed: int, device_id: str) -> str:
    # A stable shuffle: canaries are spread over the stratum, not the alphabetically first.
    return hashlib.sha256(f"{seed}:{device_id}".encode()).hexdigest()


def _largest_remainder(total: int, weights: dict[str, int]) -> dict[str, int]:
    weight_sum = sum(weights.values())
    exact = {key: total * w / weight_sum for key, w in weights.items()}
    shares = {key: math.floor(v) for key, v in exact.items()}
    leftover = total - sum(shares.values())
    for key in sorted(exact, key=lambda k: (shares[k] - exact[k], k))[:leftover]:
        shares[key] += 1
    return shares


def _cumulative_sizes(stage: StageSpec, strata: dict[str, int], previous: dict[str, int]) -> dict[str, int]:
    total = sum(strata.values())
    if stage.percent is not None:
        wanted = {key: math.ceil(stage.percent / 100 * n - 1e-9) for key, n in strata.items()}
    else:
        assert stage.count is not None
        wanted = _largest_remainder(min(stage.count, total), strata)
    # Every stratum is in every stage (stratified canaries), and sizes never shrink.
    sizes = {key: min(strata[key], max(1, wanted[key], previous.get(key, 0))) for key in strata}
    short = min(stage.min_count, total) - sum(sizes.values())
    if short > 0:
        room = {key: strata[key] - sizes[key] for key in strata if strata[key] > sizes[key]}
        while short > 0 and room:
            extra = _largest_remainder(min(short, sum(room.values())), room)
            for key, n in extra.items():
                n = min(n, room[key])
                sizes[key] += n
                short -= n
            room = {key: strata[key] - sizes[key] for key in strata if strata[key] > sizes[key]}
    return sizes


def plan_rollout(
    spec: RolloutSpec, fleet: list[DeviceFacts], package_profiles: Mapping[str, Sequence[str]] | None = None
) -> Plan:
    """Assign every targeted device a stratum and a stage.

    ``package_profiles`` (package id -> hardware profiles it is built for), when given,
    leaves out devices the release's package cannot run on.

    Raises:
        PlanError: explicit device ids are unknown, or nothing is left to roll out to.
    """
    targets, missing = select_targets(spec, fleet)
    if missing:
        raise PlanError(f"target.device_ids names unregistered devices: {', '.join(missing[:10])}")
    skipped: dict[str, str] = {}
    eligible: list[tuple[DeviceFacts, str]] = []
    for device in targets:
        package_id = spec.release.package_for(device.hardware_profile)
        if package_id is None:
            skipped[device.device_id] = f"release has no package for hardware profile {device.hardware_profile!r}"
        elif package_profiles is not None and device.hardware_profile not in package_profiles.get(package_id, ()):
            skipped[device.device_id] = f"package {package_id} is not built for {device.hardware_profile}"
        elif device.running_package_id == package_id:
            skipped[device.device_id] = "already runs the release"
        else:
            eligible.append((device, package_id))
    if not eligible:
        reason = "no device matches the target" if not targets else "every targeted device is skipped: " + "; ".join(
            sorted(set(skipped.values()))
        )
        raise PlanError(reason)

    by_stratum: dict[str, list[tuple[DeviceFacts, str]]] = defaultdict(list)
    for device, package_id in eligible:
        by_stratum[stratum_of(device, list(spec.stratify_by))].append((device, package_id))
    for members in by_stratum.values():
        members.sort(key=lambda pair: _order_key(spec.seed, pair[0].device_id))
    strata = {key: len(members) for key, members in sorted(by_stratum.items())}

    stage_sizes: list[dict[str, int]] = []
    previous: dict[str, int] = {}
    for stage in spec.stages:
        previous = _cumulative_sizes(stage, strata, previous)
        stage_sizes.append(previous)

    planned: list[PlannedDevice] = []
    for key, members in sorted(by_stratum.items()):
        for position, (device, package_id) in enumerate(members):
            stage_index = next((i for i, sizes in enumerate(stage_sizes) if position < sizes[key]), None)
            if stage_index is None:
                skipped[device.device_id] = "beyond the last stage's share"
                continue
            planned.append(PlannedDevice(
                device_id=device.device_id, stratum=key, stage=stage_index, package_id=package_id,
                online=device.online, previous_package_id=device.running_package_id,
                previous_model_version=device.running_model_version,
            ))
    return Plan(devices=planned, strata=strata, stage_sizes=stage_sizes, skipped=skipped)
