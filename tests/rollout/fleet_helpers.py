"""Helpers for rollout integration tests: packages, a registered simulated fleet, waiting."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from sqlmodel import Session, col, select

from cloud.fleet.tables import DeviceJob
from cloud.pipeline.quickstart import PipelineResult, register_and_package
from cloud.server import ControlPlane
from tests.support.models import TrainedModel, constant_model
from tests.support.rollout_devices import ModelOracle, RolloutFleet
from tests.support.services import wait_for

X86 = "x86-64-avx2"
ARM = "arm64-neon"
PROFILES = [X86, ARM]
LABELS = ["circle", "cross", "square", "triangle"]
FINAL_STATES = ("completed", "aborted", "cancelled")


def publish_constant(plane: ControlPlane, workdir: Path, name: str, *, value: float = 0.0,
                     profiles: list[str] | None = None) -> PipelineResult:
    """A package whose model outputs ``value`` everywhere (NaN for a broken release)."""
    workdir.mkdir(parents=True, exist_ok=True)
    onnx_path = constant_model(workdir / f"{name}.onnx", len(LABELS), value)
    return _publish(plane, onnx_path, LABELS, name, "synthetic-constant", profiles)


def publish_trained(plane: ControlPlane, model: TrainedModel, name: str, *, labels: list[str] | None = None,
                    profiles: list[str] | None = None) -> PipelineResult:
    return _publish(plane, model.onnx_path, labels or model.labels, name, model.dataset_id, profiles)


def _publish(plane: ControlPlane, onnx_path: Path, labels: list[str], name: str, dataset_id: str,
             profiles: list[str] | None) -> PipelineResult:
    result = register_and_package(plane.engine, onnx_path=onnx_path, labels=labels, model_name=name,
                                  dataset_id=dataset_id, packages_dir=plane.settings.packages_dir,
                                  hardware_profiles=profiles or PROFILES)
    # Listed in TUF now, so concurrent engine processes never race to add it.
    plane.security.publish_package(plane.settings.packages_dir / result.package_id)
    return result


def package_dir(plane: ControlPlane, result: PipelineResult) -> Path:
    return plane.settings.packages_dir / result.package_id


def device_ids(counts: dict[str, int]) -> dict[str, list[str]]:
    return {profile: [f"{profile.split('-')[0]}-{i:03d}" for i in range(n)] for profile, n in counts.items()}


def start_fleet(plane: ControlPlane, api: Any, counts: dict[str, int], initial: PipelineResult, *,
                oracle: ModelOracle | None = None, **kwargs: Any) -> RolloutFleet:
    """Register the devices, start one simulator per profile on ``initial``, wait until all are online."""
    ids = device_ids(counts)
    for profile, members in ids.items():
        for device_id in members:
            response = api.post("/api/v1/devices", json={"id": device_id, "hardware_profile": profile})
            assert response.status_code == 201, response.text
    fleet = RolloutFleet(plane.broker_url, plane.settings.topic_prefix, ids,
                         initial={p: (initial.model_version, initial.package_id) for p in ids}, oracle=oracle,
                         **kwargs)
    fleet.start()
    total = sum(counts.values())
    wait_for(lambda: sum(d["online"] and d["running_package_id"] == initial.package_id
                         for d in api.get("/api/v1/devices", params={"limit": 1000}).json()) == total,
             60, what=f"{total} simulated devices online on the initial release")
    return fleet


def fast_spec(name: str, release: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """A spec with short soaks and timeouts (seconds, not minutes) and small sample minimums."""
    spec: dict[str, Any] = {
        "name": name, "release": release, "target": {"all_devices": True},
        "stages": [{"percent": 10}, {"percent": 50}, {"percent": 100}],
        "soak_s": 2, "dispatch_rate_per_s": 500, "max_retries": 1,
        "timeouts": {"queued_s": 20, "downloading_s": 20, "installing_s": 20, "probation_s": 20,
                     "rollback_s": 30, "offline_expiry_s": 3600},
        "gates": {"min_frames": 40, "min_latency_windows": 3, "probation_min_windows": 2, "gate_wait_s": 60,
                  "control_window_s": 60},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    return spec


def create(api: Any, spec: dict[str, Any]) -> dict[str, Any]:
    response = api.post("/api/v1/rollouts", json=spec)
    assert response.status_code == 201, response.text
    detail: dict[str, Any] = response.json()
    return detail


def wait_state(api: Any, rollout_id: str, states: tuple[str, ...] = FINAL_STATES,
               timeout_s: float = 120) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        detail: dict[str, Any] = api.get(f"/api/v1/rollouts/{rollout_id}").json()
        return detail if detail["state"] in states else None

    try:
        result: dict[str, Any] = wait_for(reached, timeout_s, 0.25, what=f"rollout {rollout_id} to reach {states}")
    except AssertionError:
        detail = api.get(f"/api/v1/rollouts/{rollout_id}").json()
        raise AssertionError(f"rollout stuck in {detail['state']}: {detail['evaluation'].get('reason')}; "
                             f"devices {detail['devices_by_stratum']}") from None
    return result


def rows(api: Any, rollout_id: str) -> dict[str, dict[str, Any]]:
    return {r["device_id"]: r for r in api.get(f"/api/v1/rollouts/{rollout_id}/devices").json()}


def jobs_per_device(plane: ControlPlane, package_id: str) -> Counter[str]:
    with Session(plane.engine) as session:
        return Counter(session.exec(select(DeviceJob.device_id).where(col(DeviceJob.package_id) == package_id)))


def actions(detail: dict[str, Any]) -> list[str]:
    return [d["action"] for d in detail["decisions"]]


def wait_device_state(api: Any, rollout_id: str, device_id: str, state: str, timeout_s: float = 60) -> None:
    try:
        wait_for(lambda: rows(api, rollout_id)[device_id]["state"] == state, timeout_s, 0.25,
                 what=f"{device_id} to be {state}")
    except AssertionError:
        detail = api.get(f"/api/v1/rollouts/{rollout_id}").json()
        row = rows(api, rollout_id)[device_id]
        raise AssertionError(f"{device_id} is {row}; rollout {detail['state']} stage {detail['stage']} "
                             f"{detail['phase']}: {detail['evaluation'].get('reason')}") from None
