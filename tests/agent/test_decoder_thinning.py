"""The decoder pipes out only the frames a camera's analysed rate can use, never fewer.

The filter the agent hands ffmpeg is run by the real ffmpeg on generated H.264 clips of
known frame count and rate, so frame counts are exact (no clock involved).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from agent.capture.stream import DecoderChoice, StreamSettings, build_ffmpeg_command

FRAME_BYTES = 64 * 48 * 3


def _clip(tmp_path: Path, fps: int, seconds: int) -> Path:
    path = tmp_path / f"clip-{fps}.mp4"
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i",
                    f"testsrc=size=64x48:rate={fps}", "-t", str(seconds), "-c:v", "libx264", "-y", str(path)],
                   check=True)
    return path


def _frames_out(clip: Path, analysed_fps: float) -> int:
    command = build_ffmpeg_command("rtsp://camera.invalid/stream", StreamSettings(analysed_fps=analysed_fps),
                                   DecoderChoice("software", ()))
    # The agent's output side (filters, rawvideo BGR on stdout) applied to the clip.
    output = command[command.index("-an"):]
    completed = subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-i", str(clip), *output],
                               capture_output=True, check=True)
    return len(completed.stdout) // FRAME_BYTES


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    if shutil.which("ffmpeg") is None:
        pytest.skip("needs ffmpeg (make rtsp-deps)")
    directory = tmp_path_factory.mktemp("clips")
    return {fps: _clip(directory, fps, 4) for fps in (4, 15, 30)}


def test_every_frame_is_piped_when_the_camera_is_analysed_at_any_rate(clips: dict[int, Path]) -> None:
    assert _frames_out(clips[15], 0.0) == 60


def test_a_15_fps_camera_analysed_at_5_fps_pipes_half_its_frames(clips: dict[int, Path]) -> None:
    # Frames at least 0.09 s apart: every second one, 7.5 a second, enough for 5.
    assert _frames_out(clips[15], 5.0) == 30


def test_a_30_fps_camera_analysed_at_5_fps_pipes_a_third(clips: dict[int, Path]) -> None:
    assert _frames_out(clips[30], 5.0) == 40


def test_a_camera_slower_than_twice_the_analysed_rate_loses_nothing(clips: dict[int, Path]) -> None:
    assert _frames_out(clips[4], 5.0) == 16


def test_the_thinning_filter_comes_before_the_hardware_download() -> None:
    command = build_ffmpeg_command("rtsp://camera.invalid/stream", StreamSettings(analysed_fps=5.0),
                                   DecoderChoice("vaapi", ("-hwaccel", "vaapi")))
    filters = command[command.index("-vf") + 1]
    assert filters.startswith("select=") and filters.endswith("hwdownload,format=nv12")
