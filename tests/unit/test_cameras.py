"""Camera sets managed from the control plane: the shared checks, the diff, the saved set, the crop."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from agent.cameras import (
    AppliedCameraSet,
    CameraSetFile,
    device_problems,
    pipeline_config_for,
    plan_cameras,
    reported_spec,
    roi_of,
    shared_model_problems,
    spec_of,
)
from agent.config import AgentConfig, PipelineConfig
from agent.contract import CameraConfigCommand, CameraRegion, CameraSpec, parse_any_command
from agent.contract.cameras import camera_set_problems
from agent.contract.signing import command_signing_bytes
from agent.pipeline import crop_roi


def cam(name: str, source: str = "synthetic:1", **fields: object) -> CameraSpec:
    return CameraSpec(name=name, source=source, **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(("specs", "fragment"), [
    ([], "at least one camera"),
    ([cam("a"), cam("a", "synthetic:2")], "used more than once: 'a'"),
    ([cam("a b")], "must be 1-32 letters"),
    ([cam("a", "rtsp://admin:hunter2@10.0.0.5/stream")], "{secret:NAME}"),
    ([cam("a", "rtsp://admin@10.0.0.5/stream")], "literal credentials"),
    ([cam("a", "http://10.0.0.5/video.mjpg?user=x&password=y")], "'password' parameter"),
    ([cam("a", "rtsp://10.0.0.5:notaport/stream")], "cannot be parsed"),
    ([cam("a", "rtsp:///stream")], "names no host"),
    ([cam("a", "ftp://10.0.0.5/x")], "unsupported URL scheme 'ftp'"),
    ([cam("a", "synthetic:x")], "synthetic:<integer seed>"),
    ([cam("a", target_fps=500)], "target_fps must be between"),
    ([cam("a", region=CameraRegion(x=0.5, y=0, width=0.6, height=1))], "inside the frame"),
    ([cam("a", region=CameraRegion(x=0, y=0, width=0, height=1))], "width and height > 0"),
    ([cam(f"c{i}") for i in range(9)], "at most 8"),
    ([cam("a", "/data/clip\x00.mp4")], "control characters"),
    ([cam("a", package_id=" ")], "is not a package id"),
    ([cam("a\n")], "must be 1-32 letters"),
])
def test_bad_camera_sets_say_what_to_fix(specs: list[CameraSpec], fragment: str) -> None:
    problems = camera_set_problems(specs)
    assert problems and any(fragment in p for p in problems), problems


def test_good_camera_sets_pass() -> None:
    specs = [cam("door", "rtsp://{secret:door-cam}@10.0.0.5:554/stream1", rtsp_transport="udp", target_fps=5,
                 region=CameraRegion(x=0.25, y=0.25, width=0.5, height=0.75)),
             cam("yard", "http://10.0.0.6/video.mjpg"), cam("usb", "0"), cam("clip", "/data/clip.mp4"),
             cam("sim", "synthetic:7", package_id="pkg-1")]
    assert camera_set_problems(specs) == []


def test_device_refuses_a_package_it_does_not_hold() -> None:
    specs = [cam("a", package_id="pkg-1"), cam("b", package_id="pkg-2")]
    problems = device_problems(specs, known_packages={"pkg-1"})
    assert len(problems) == 1 and "'pkg-2' is not on this device" in problems[0]


def test_plan_touches_only_what_changed() -> None:
    current = [cam("a"), cam("b", "synthetic:2"), cam("c", "synthetic:3")]
    desired = [cam("a"), cam("b", "synthetic:2", target_fps=2), cam("d", "synthetic:4")]
    plan = plan_cameras(current, desired)
    assert (plan.start, plan.stop, plan.restart, plan.keep) == (["d"], ["c"], ["b"], ["a"])
    assert plan_cameras(current, current).changes_nothing


def test_saved_set_round_trips_and_bad_files_fall_back(tmp_path: Path) -> None:
    store = CameraSetFile(tmp_path)
    assert store.load() is None
    applied = AppliedCameraSet(revision=3, cameras=[cam("a", region=CameraRegion(x=0.1, width=0.5))])
    store.save(applied)
    assert CameraSetFile(tmp_path).load() == applied
    store.path.write_text('{"revision": -1}')
    assert store.load() is None


def test_config_file_cameras_are_revision_zero_specs_and_keep_their_settings() -> None:
    base = PipelineConfig(name="door", source="rtsp://10.0.0.5/s", credentials_ref="door", stall_timeout_s=3,
                          target_fps=4)
    spec = spec_of(base)
    assert spec.source == "rtsp://{secret:door}@10.0.0.5/s" and spec.target_fps == 4
    config = AgentConfig(device_id="dev-1")
    same = pipeline_config_for(spec, config=config, base=base)
    assert spec_of(same) == spec and same.stall_timeout_s == 3
    moved = pipeline_config_for(spec.model_copy(update={"source": "rtsp://{secret:door}@10.0.0.9/s"}),
                                config=config, base=base)
    assert moved.credentials_ref is None and moved.source_url() == "rtsp://{secret:door}@10.0.0.9/s"
    assert reported_spec(cam("x", "rtsp://u:p@h/s")).source == "rtsp://***@h/s"


def test_camera_command_round_trips_and_signs_every_field() -> None:
    command = CameraConfigCommand(device_id="dev-1", job_id="cam-1", revision=2, seq=5,
                                  expires_at=datetime.now(UTC) + timedelta(minutes=5),
                                  cameras=[cam("a", package_id="p", region=CameraRegion(x=0.5, width=0.5))])
    parsed = parse_any_command(command.to_bytes())
    assert parsed == command
    changed = command.model_copy(update={"cameras": [cam("a", package_id="p")]})
    assert command_signing_bytes(changed) != command_signing_bytes(command)


def test_a_cameras_region_is_its_pipelines_region_of_interest() -> None:
    """One crop: a managed camera's region becomes the engine-side roi (boxes map back from it)."""
    spec = cam("a", region=CameraRegion(x=0.5, y=0.25, width=0.5, height=0.5))
    config = pipeline_config_for(spec, config=AgentConfig(device_id="dev-1"), base=None)
    assert config.roi == (0.5, 0.25, 0.5, 0.5) and spec_of(config) == spec
    frame = np.arange(40 * 60 * 3, dtype=np.uint8).reshape(40, 60, 3)
    crop, origin = crop_roi(frame, config.roi)
    assert crop.shape == (20, 30, 3) and (crop == frame[10:30, 30:60]).all() and origin == (30, 10)
    tiny = roi_of(CameraRegion(x=0.999, y=0.999, width=0.001, height=0.001))
    assert crop_roi(frame, tiny)[0].shape == (1, 1, 3)


def test_cameras_assigned_one_package_share_its_model() -> None:
    agent = AgentConfig(device_id="dev-1")
    yard, gate = (pipeline_config_for(cam(n, package_id="shapes-3"), config=agent, base=None) for n in ("yard", "gate"))
    assert yard.model_group == gate.model_group == "package.shapes-3"
    assert pipeline_config_for(cam("door"), config=agent, base=None).model_group == "door"
    shared = PipelineConfig(name="a", source="synthetic:1", model="shared")
    assert pipeline_config_for(cam("a", package_id="p"), config=agent, base=shared).model_group == "shared"
    b = PipelineConfig(name="b", source="synthetic:2", model="shared", package_id="q")
    a = pipeline_config_for(cam("a", package_id="p"), config=agent, base=shared)
    assert "share model 'shared' but are assigned different packages" in shared_model_problems([a, b])[0]
    assert shared_model_problems([a, b.model_copy(update={"package_id": "p"}), yard, gate]) == []
