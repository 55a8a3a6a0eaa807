"""Pure core: spec validation and the stratified planner (no broker, no database)."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cloud.rollout.planner import DeviceFacts, PlanError, plan_rollout
from cloud.rollout.spec import MaintenanceWindow, RolloutSpec, SpecError, load_spec, parse_spec


def _spec(**overrides: object) -> RolloutSpec:
    document: dict[str, object] = {"name": "r", "release": {"package_id": "pkg-new"}, "target": {"all_devices": True}}
    document.update(overrides)
    return parse_spec(document)


def _fleet(per_profile: dict[str, int], *, runtime: str = "onnxruntime") -> list[DeviceFacts]:
    return [DeviceFacts(device_id=f"{profile}-{i:03d}", hardware_profile=profile, runtime=runtime,
                        running_package_id="pkg-old")
            for profile, count in per_profile.items() for i in range(count)]


def test_default_stages_are_cumulative_percentages() -> None:
    spec = _spec()
    assert [s.percent for s in spec.stages] == [1, 10, 50, 100]


@pytest.mark.parametrize("document, fragment", [
    ({"stages": [{"percent": 50}, {"percent": 10}]}, "cumulative"),
    ({"stages": [{"percent": 10, "count": 3}]}, "exactly one of percent or count"),
    ({"target": {}}, "target selects nothing"),
    ({"release": {}}, "release needs package_id or packages"),
    ({"timeouts": {"queued_s": 0}}, "timeouts.queued_s"),
    ({"shadow": {"stages": [7]}}, "shadow.stages"),
    ({"surprise": 1}, "surprise"),
])
def test_bad_specs_say_what_to_fix(document: dict[str, object], fragment: str) -> None:
    with pytest.raises(SpecError, match=fragment):
        _spec(**document)


def test_yaml_spec_loads(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text("name: y\nrelease: {packages: {arm: p-arm, x86: p-x86}}\ntarget: {tags: [lobby]}\n"
                    "stages: [{count: 4, min_count: 2, soak_s: 5}, {percent: 100}]\n"
                    "maintenance_windows: [{start: '22:00', end: '04:00'}]\n")
    spec = load_spec(path)
    assert spec.release.package_for("arm") == "p-arm" and spec.release.package_for("riscv") is None
    assert spec.stage_soak_s(0) == 5 and spec.stage_soak_s(1) == spec.soak_s
    (tmp_path / "bad.yaml").write_text("name: [unclosed")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(tmp_path / "bad.yaml")


def test_maintenance_window_wraps_midnight() -> None:
    window = MaintenanceWindow.model_validate({"start": "22:00", "end": "04:00", "weekdays": [1]})
    monday_late = datetime(2026, 11, 23, 23, 0, tzinfo=UTC)  # a Monday
    tuesday_early = datetime(2026, 11, 24, 3, 0, tzinfo=UTC)
    tuesday_late = datetime(2026, 11, 24, 23, 0, tzinfo=UTC)
    assert window.contains(monday_late) and window.contains(tuesday_early)
    assert not window.contains(tuesday_late)
    assert not window.contains(datetime(2026, 11, 23, 12, 0, tzinfo=UTC))


def test_every_stage_takes_devices_from_every_stratum() -> None:
    fleet = _fleet({"x86": 90, "arm": 10})
    plan = plan_rollout(_spec(), fleet)
    assert plan.strata == {"arm/onnxruntime": 10, "x86/onnxruntime": 90}
    first = plan.stage_devices(0)
    # 1 % of each stratum rounds up to one device, so the small stratum is never left out.
    assert Counter(d.stratum for d in first) == {"arm/onnxruntime": 1, "x86/onnxruntime": 1}
    assert plan.stage_sizes[-1] == plan.strata  # 100 % reaches everyone
    assert len({d.device_id for d in plan.devices}) == 100


def test_count_stages_spread_proportionally_with_min_count() -> None:
    fleet = _fleet({"x86": 30, "arm": 10})
    plan = plan_rollout(_spec(stages=[{"count": 8}, {"count": 8, "min_count": 20}, {"percent": 100}]), fleet)
    assert plan.stage_sizes[0] == {"arm/onnxruntime": 2, "x86/onnxruntime": 6}
    assert sum(plan.stage_sizes[1].values()) == 20
    assert plan.stage_sizes[2] == {"arm/onnxruntime": 10, "x86/onnxruntime": 30}


def test_plan_is_stable_for_a_seed_and_spreads_canaries() -> None:
    fleet = _fleet({"x86": 50})
    first = plan_rollout(_spec(), fleet).stage_devices(0)
    assert first == plan_rollout(_spec(), fleet).stage_devices(0)
    assert first != plan_rollout(_spec(seed=7), fleet).stage_devices(0) or len(first) == 50


def test_selector_tags_groups_profiles_and_explicit_ids() -> None:
    fleet = [
        DeviceFacts("a", "x86", tags=frozenset({"lobby", "eu"}), groups=frozenset({"g1"})),
        DeviceFacts("b", "x86", tags=frozenset({"lobby"}), groups=frozenset({"g2"})),
        DeviceFacts("c", "arm", tags=frozenset({"lobby", "eu"}), groups=frozenset({"g1"})),
        DeviceFacts("d", "arm"),
    ]
    ids = lambda spec: sorted(d.device_id for d in plan_rollout(spec, fleet).devices)  # noqa: E731
    assert ids(_spec(target={"tags": ["lobby", "eu"]})) == ["a", "c"]
    assert ids(_spec(target={"groups": ["g2"], "device_ids": ["d"]})) == ["b", "d"]
    assert ids(_spec(target={"tags": ["lobby"], "hardware_profiles": ["arm"]})) == ["c"]
    with pytest.raises(PlanError, match="unregistered devices: zz"):
        plan_rollout(_spec(target={"device_ids": ["zz"]}), fleet)


def test_devices_without_a_package_or_already_current_are_skipped() -> None:
    fleet = [DeviceFacts("a", "x86", running_package_id="p-x86"), DeviceFacts("b", "riscv"),
             DeviceFacts("c", "arm")]
    spec = _spec(release={"packages": {"x86": "p-x86", "arm": "p-arm"}})
    plan = plan_rollout(spec, fleet, {"p-x86": ["x86"], "p-arm": ["arm"]})
    assert [d.device_id for d in plan.devices] == ["c"]
    assert plan.skipped == {"a": "already runs the release",
                            "b": "release has no package for hardware profile 'riscv'"}
    with pytest.raises(PlanError, match="every targeted device is skipped"):
        plan_rollout(_spec(target={"device_ids": ["a"]}, release={"package_id": "p-x86"}), fleet)
