"""`edgefleet data video`: the scenes of the synthetic dataset, read back by the agent's own source
pixel for pixel, a shift that starts when asked, and bad options refused with what to change."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from agent.capture.source import open_source, read_frame
from cloud.cli import app
from cloud.pipeline.data.synth import write_synthetic_dataset
from cloud.pipeline.data.video import (
    DetectionVideoSettings,
    VideoSettings,
    detection_scene_frames,
    scene_frames,
    write_scene_video,
)


def _grey_means(frames: list[np.ndarray]) -> np.ndarray:
    return np.asarray([cv2.cvtColor(f, cv2.COLOR_BGR2GRAY).mean() for f in frames])


def test_the_agent_reads_back_exactly_the_rendered_frames(tmp_path: Path) -> None:
    settings = VideoSettings(seconds=2.0, fps=10.0, seed=3)
    summary = write_scene_video(tmp_path / "cam.avi", settings)
    assert (summary.frames, summary.shifted_frames, summary.width, summary.height) == (20, 0, 64, 64)
    rendered = [frame for frame, _ in scene_frames(settings)]
    source = open_source(str(tmp_path / "cam.avi"), loop=False)
    try:
        read = [read_frame(source) for _ in range(20)]
    finally:
        source.close()
    assert all(frame is not None for frame in read)
    # Lossless: the agent sees the rendered pixels, not a codec's version of them.
    assert all(np.array_equal(a, b) for a, b in zip(rendered, read, strict=True))
    # A new scene every second frame, and the same settings give the same video.
    assert np.array_equal(rendered[0], rendered[1]) and not np.array_equal(rendered[1], rendered[2])
    assert all(np.array_equal(a, b) for a, b in zip(rendered, (f for f, _ in scene_frames(settings)), strict=True))


def test_unshifted_scenes_look_like_the_dataset_and_dark_ones_do_not(tmp_path: Path) -> None:
    root = write_synthetic_dataset(tmp_path / "shapes", images_per_class=50, seed=5)
    dataset = _grey_means([cv2.imread(str(p)) for p in sorted(root.glob("*/*.png"))])
    normal = VideoSettings(seconds=20.0, fps=10.0, frames_per_scene=1, seed=6)
    video = _grey_means([frame for frame, _ in scene_frames(normal)])
    assert abs(video.mean() - dataset.mean()) < 0.1 * dataset.mean()
    dark = VideoSettings(seconds=20.0, fps=10.0, frames_per_scene=1, seed=6, shift="dark", shift_at_s=5.0)
    frames = list(scene_frames(dark))
    assert [shifted for _, shifted in frames] == [False] * 50 + [True] * 150
    before, after = _grey_means([f for f, s in frames if not s]), _grey_means([f for f, s in frames if s])
    assert after.mean() < 0.5 * before.mean()
    # Darker than the dataset's darkest lighting ("dim", 0.7) on average.
    assert after.mean() < 0.6 * dataset.mean()


def test_a_larger_frame_letterboxes_the_scene() -> None:
    frame, _ = next(scene_frames(VideoSettings(seconds=1.0, width=160, height=120)))
    assert frame.shape == (120, 160, 3)
    assert (frame[:, :20] == 30).all() and (frame[:, -20:] == 30).all()


@pytest.mark.parametrize(("args", "says"), [
    (["x.mp4"], ".avi or .mkv"),
    (["x.avi", "--shift", "dim"], "choose one of none, dark, blur, new-object"),
    (["x.avi", "--fps", "0"], "--fps"),
    (["x.avi", "--seconds", "5", "--shift", "dark", "--shift-at", "5"], "--shift-at"),
    (["x.avi", "--width", "32"], "at least --size"),
    (["x.avi", "--frames-per-scene", "0"], "--frames-per-scene"),
    (["missing/x.avi"], "does not exist"),
    (["x.avi", "--task", "tracking"], "--task must be classification or detection"),
    (["x.avi", "--task", "detection", "--shift", "dark"], "leave it out with --task detection"),
    (["x.avi", "--task", "detection", "--width", "48"], "64-4096 px for detection scenes"),
])
def test_bad_options_exit_2_saying_what_to_change(args: list[str], says: str, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["data", "video", *args], env={"COLUMNS": "200"})
    assert result.exit_code == 2, result.output
    assert says in " ".join(result.output.split())
    assert not list(tmp_path.iterdir())


def test_the_command_writes_a_shifted_video(tmp_path: Path) -> None:
    out = tmp_path / "dimmed.mkv"
    result = CliRunner().invoke(app, ["data", "video", str(out), "--seconds", "3", "--fps", "5", "--shift", "dark",
                                      "--shift-at", "1"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "15 frames" in result.output and "from 1 s on (10 frames)" in result.output
    capture = cv2.VideoCapture(str(out))
    try:
        assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 15
    finally:
        capture.release()


def test_a_new_object_shift_shows_a_shape_no_dataset_holds() -> None:
    import numpy as np

    from agent.capture.scenes import NOVEL_CLASSES, SCENE_CLASSES, render_scene

    assert not set(NOVEL_CLASSES) & set(SCENE_CLASSES)
    star = render_scene("star", np.random.default_rng(0), size=64)
    assert star.shape == (64, 64, 3) and star.max() >= 150  # the object is brighter than the background
    with pytest.raises(ValueError, match="unknown scene class"):
        render_scene("hexagon", np.random.default_rng(0))
    settings = VideoSettings(seconds=2.0, fps=10.0, frames_per_scene=1, seed=8, shift="new-object", shift_at_s=1.0)
    unshifted = VideoSettings(seconds=2.0, fps=10.0, frames_per_scene=1, seed=8)
    pairs = list(zip(scene_frames(settings), scene_frames(unshifted), strict=True))
    # The same scenes until the shift; other objects after it.
    assert all(np.array_equal(a, b) for (a, shifted), (b, _) in pairs if not shifted)
    assert not any(np.array_equal(a, b) for (a, shifted), (b, _) in pairs if shifted)


def test_a_detection_video_shows_the_detection_dataset_s_scenes_and_the_agent_reads_them_back(
        tmp_path: Path) -> None:
    from cloud.pipeline.data.synth_detection import write_detection_dataset

    out = tmp_path / "scenes.avi"
    result = CliRunner().invoke(app, ["data", "video", str(out), "--task", "detection", "--seconds", "2",
                                      "--fps", "10", "--seed", "4"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "20 frames, 200x150" in result.output
    settings = DetectionVideoSettings(seconds=2.0, fps=10.0, seed=4)
    rendered = list(detection_scene_frames(settings))
    source = open_source(str(out), loop=False)
    try:
        read = [read_frame(source) for _ in range(20)]
    finally:
        source.close()
    assert all(np.array_equal(a, b) for a, b in zip(rendered, read, strict=True))
    assert np.array_equal(rendered[0], rendered[1]) and not np.array_equal(rendered[1], rendered[2])
    # The detection dataset's frames: same size, and brightness like theirs (its lighting and cameras).
    root = write_detection_dataset(tmp_path / "scenes", images=40, seed=4)
    dataset = _grey_means([cv2.imread(str(p)) for p in sorted((root / "images").glob("*.png"))])
    video = _grey_means(list(detection_scene_frames(DetectionVideoSettings(seconds=4.0, fps=10.0,
                                                                            frames_per_scene=1, seed=9))))
    assert rendered[0].shape == cv2.imread(str(root / "images" / "00000.png")).shape
    assert abs(video.mean() - dataset.mean()) < 0.15 * dataset.mean()
