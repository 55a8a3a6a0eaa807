"""``edgefleet data video``: a test video of synthetic scenes that an agent can read as its ``source``.

The scenes come from the same generator, lighting mix and noise as ``edgefleet data synth``
(:mod:`cloud.pipeline.data.synth`), so a model trained on a synthetic dataset sees in the video
what it was trained and gated on, and its drift reference finds nothing unusual. A *shift*
changes the scene from a chosen moment on, the way a camera's view changes in service: ``dark``
(lights dimmed far below the training data's darkest lighting), ``blur`` (a lens out of
focus) or ``new-object`` (a shape of a class the model never learned). Frames are written losslessly (FFV1), so the pixels an agent reads are the ones rendered.

Detection has its own variant: :func:`detection_scene_frames` renders the scenes of
``edgefleet data synth-detection`` (:mod:`cloud.pipeline.data.synth_detection`: one to four
shapes per frame on textured backgrounds, under its lighting conditions and cameras), so a
detector trained on a synthetic detection dataset finds in the video the objects it learned.

:func:`scene_frames` and :func:`detection_scene_frames` are pure (settings in, frames out);
:func:`write_scene_video` and :func:`write_detection_video` write them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from agent.capture.scenes import NOVEL_CLASSES, SCENE_CLASSES, SceneConditions, render_scene
from cloud.pipeline.data.synth import LIGHTING

__all__ = ["SHIFTS", "VIDEO_SUFFIXES", "DetectionVideoSettings", "SceneShift", "VideoSettings", "VideoSummary",
           "detection_scene_frames", "scene_frames", "write_detection_video", "write_scene_video"]


def _check_length(seconds: float, fps: float, frames: int) -> None:
    """A test video's rate and length, as the ``edgefleet data video`` options name them."""
    if not 0 < fps <= 120:
        raise ValueError(f"--fps must be in (0, 120], not {fps:g}")
    if seconds <= 0 or frames < 1:
        raise ValueError(f"--seconds {seconds:g} at --fps {fps:g} gives no frame; give a longer video")
    if frames > 100_000:
        raise ValueError(f"{frames} frames is too long for a test video; keep --seconds x --fps under 100000")


@dataclass(frozen=True)
class SceneShift:
    """How a shifted scene differs from the training scenes."""

    brightness: float = 1.0  # multiplies the scene's lighting
    blur_sigma: float = 0.0  # a Gaussian blur after rendering, in pixels of the scene
    novel_objects: bool = False  # shapes of NOVEL_CLASSES instead of the trained ones
    meaning: str = ""


SHIFTS: dict[str, SceneShift] = {
    "none": SceneShift(meaning="scenes like the training images throughout"),
    # 0.35 of normal light is half the training data's dimmest lighting (0.7): unmistakable in luma.
    "dark": SceneShift(brightness=0.35, meaning="the lights go down: every scene at 35% brightness"),
    "blur": SceneShift(blur_sigma=2.5, meaning="the lens goes out of focus: a 2.5 px Gaussian blur"),
    "new-object": SceneShift(novel_objects=True, meaning="objects of a class the model never learned (stars)"),
}

# FFV1 is lossless and every OpenCV build with FFmpeg (the agent's opencv-python-headless) reads it.
VIDEO_SUFFIXES = (".avi", ".mkv")
_BORDER_GREY = 30


@dataclass(frozen=True)
class VideoSettings:
    """What to render. ``width``/``height`` default to ``size`` (the scene fills the frame).

    Raises:
        ValueError: a setting out of range, with what to change.
    """

    seconds: float = 20.0
    fps: float = 10.0
    size: int = 64
    width: int | None = None
    height: int | None = None
    frames_per_scene: int = 2
    seed: int = 0
    noise: float = 3.0
    shift: str = "none"
    shift_at_s: float = 0.0

    def __post_init__(self) -> None:
        _check_length(self.seconds, self.fps, self.frames)
        if not 16 <= self.size <= 1024:
            raise ValueError(f"--size must be 16-1024 px (the dataset's image size), not {self.size}")
        if self.frame_width < self.size or self.frame_height < self.size:
            raise ValueError(f"the frame ({self.frame_width}x{self.frame_height}) must be at least --size "
                             f"({self.size}) on each side")
        if max(self.frame_width, self.frame_height) > 4096:
            raise ValueError("--width and --height must be at most 4096 px")
        if self.frames_per_scene < 1:
            raise ValueError("--frames-per-scene must be at least 1")
        if self.noise < 0:
            raise ValueError("--noise must not be negative")
        if self.shift not in SHIFTS:
            raise ValueError(f"unknown --shift {self.shift!r}; choose one of {', '.join(SHIFTS)}")
        if self.shift_at_s < 0 or (self.shift != "none" and self.shift_at_s >= self.seconds):
            raise ValueError(f"--shift-at must be in [0, {self.seconds:g}) seconds (inside the video), "
                             f"not {self.shift_at_s:g}")

    @property
    def frames(self) -> int:
        return round(self.seconds * self.fps)

    @property
    def frame_width(self) -> int:
        return self.width if self.width is not None else self.size

    @property
    def frame_height(self) -> int:
        return self.height if self.height is not None else self.size

    @property
    def first_shifted_frame(self) -> int | None:
        return None if self.shift == "none" else round(self.shift_at_s * self.fps)


@dataclass(frozen=True)
class VideoSummary:
    path: Path
    frames: int
    shifted_frames: int
    width: int
    height: int


def _frame_of(scene: npt.NDArray[np.uint8], width: int, height: int) -> npt.NDArray[np.uint8]:
    """The scene scaled to the frame's shorter side and centred on a dark border (a letterboxed camera)."""
    if scene.shape[:2] == (height, width):
        return scene
    side = min(width, height)
    scaled = cv2.resize(scene, (side, side), interpolation=cv2.INTER_LINEAR)
    frame = np.full((height, width, 3), _BORDER_GREY, dtype=np.uint8)
    y0, x0 = (height - side) // 2, (width - side) // 2
    frame[y0 : y0 + side, x0 : x0 + side] = scaled
    return frame


def scene_frames(settings: VideoSettings) -> Iterator[tuple[npt.NDArray[np.uint8], bool]]:
    """Each frame of the video (BGR) and whether it is shifted. Same settings, same frames."""
    rng = np.random.default_rng(settings.seed)
    lighting = tuple(LIGHTING)
    first_shifted = settings.first_shifted_frame
    shift = SHIFTS[settings.shift]
    frame: npt.NDArray[np.uint8] | None = None
    for index in range(settings.frames):
        shifted = first_shifted is not None and index >= first_shifted
        # A new scene every frames_per_scene frames, and at the moment the shift begins.
        if frame is None or index % settings.frames_per_scene == 0 or (shifted and index == first_shifted):
            classes = NOVEL_CLASSES if shifted and shift.novel_objects else SCENE_CLASSES
            label = classes[int(rng.integers(len(classes)))]
            # The lighting mix of `edgefleet data synth`, so the unshifted video matches the training data.
            brightness = LIGHTING[lighting[int(rng.integers(len(lighting)))]]
            conditions = SceneConditions(brightness=brightness * (shift.brightness if shifted else 1.0),
                                         blur_sigma=shift.blur_sigma if shifted else 0.0, noise_std=settings.noise)
            frame = _frame_of(render_scene(label, rng, size=settings.size, conditions=conditions),
                              settings.frame_width, settings.frame_height)
        yield frame, shifted


@dataclass(frozen=True)
class DetectionVideoSettings:
    """What to render for a detector: frames of the synthetic detection scenes (default 200x150, their size).

    Raises:
        ValueError: a setting out of range, with what to change.
    """

    seconds: float = 20.0
    fps: float = 10.0
    width: int = 200
    height: int = 150
    frames_per_scene: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        _check_length(self.seconds, self.fps, self.frames)
        # The scene generator places 16-56 px shapes: a smaller frame cannot hold them.
        if not (64 <= self.width <= 4096 and 64 <= self.height <= 4096):
            raise ValueError(f"--width and --height must be 64-4096 px for detection scenes, "
                             f"not {self.width}x{self.height}")
        if self.frames_per_scene < 1:
            raise ValueError("--frames-per-scene must be at least 1")

    @property
    def frames(self) -> int:
        return round(self.seconds * self.fps)


def detection_scene_frames(settings: DetectionVideoSettings) -> Iterator[npt.NDArray[np.uint8]]:
    """Each frame of the detection video (BGR). Same settings, same frames."""
    # Imported here: the detection generator pulls in the agent's decoder, which `edgefleet data video`
    # for classification scenes (and the CLI's start-up) does without.
    from cloud.pipeline.data.synth_detection import CAMERAS as DETECTION_CAMERAS
    from cloud.pipeline.data.synth_detection import LIGHTING as DETECTION_LIGHTING
    from cloud.pipeline.data.synth_detection import render_detection_scene

    rng = np.random.default_rng(settings.seed)
    lighting, cameras = tuple(DETECTION_LIGHTING), tuple(DETECTION_CAMERAS)
    frame: npt.NDArray[np.uint8] | None = None
    for index in range(settings.frames):
        if frame is None or index % settings.frames_per_scene == 0:
            # The lighting and camera mix of `edgefleet data synth-detection`, one draw per scene.
            light = lighting[int(rng.integers(len(lighting)))]
            camera = cameras[int(rng.integers(len(cameras)))]
            frame, _objects = render_detection_scene(rng, width=settings.width, height=settings.height,
                                                     lighting=light, camera=camera)
        yield frame


def _open_writer(path: Path, fps: float, width: int, height: int) -> cv2.VideoWriter:
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise ValueError(f"write the video to a {' or '.join(VIDEO_SUFFIXES)} file, not {path.name!r} "
                         "(lossless FFV1, which agents read with OpenCV)")
    if not path.parent.is_dir():
        raise ValueError(f"directory {path.parent} does not exist; create it first")
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"FFV1"), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write FFV1 video to {path} (its build lacks the FFmpeg encoder)")
    return writer


def write_scene_video(path: Path, settings: VideoSettings) -> VideoSummary:
    """Write the video to ``path`` (``.avi`` or ``.mkv``, lossless FFV1).

    Raises:
        ValueError: another file type, or a directory that does not exist.
        RuntimeError: this OpenCV build cannot write FFV1 video.
    """
    writer = _open_writer(path, settings.fps, settings.frame_width, settings.frame_height)
    shifted_frames = 0
    try:
        for frame, shifted in scene_frames(settings):
            writer.write(frame)
            shifted_frames += shifted
    finally:
        writer.release()
    return VideoSummary(path=path, frames=settings.frames, shifted_frames=shifted_frames,
                        width=settings.frame_width, height=settings.frame_height)


def write_detection_video(path: Path, settings: DetectionVideoSettings) -> VideoSummary:
    """Write the detection video to ``path`` (``.avi`` or ``.mkv``, lossless FFV1).

    Raises:
        ValueError: another file type, or a directory that does not exist.
        RuntimeError: this OpenCV build cannot write FFV1 video.
    """
    writer = _open_writer(path, settings.fps, settings.width, settings.height)
    try:
        for frame in detection_scene_frames(settings):
            writer.write(frame)
    finally:
        writer.release()
    return VideoSummary(path=path, frames=settings.frames, shifted_frames=0, width=settings.width,
                        height=settings.height)
