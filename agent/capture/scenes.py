"""A synthetic scene generator: labelled shapes under controllable conditions.

Used for training data (``edgefleet data synth``), for demo videos, and as a
simulated camera. Lives in the agent (numpy + OpenCV only) so that devices in
tests and demos can render shifted feeds without the cloud.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

SCENE_CLASSES = ("circle", "square", "triangle", "cross")
# Shapes no synthetic dataset holds: a camera that starts seeing them sees a class its model never learned.
NOVEL_CLASSES = ("star",)


@dataclass(frozen=True)
class SceneConditions:
    """Capture conditions. ``brightness`` multiplies intensity (1 = normal)."""

    brightness: float = 1.0
    blur_sigma: float = 0.0
    noise_std: float = 0.0


def _polygon(center: tuple[float, float], radius: float, sides: int, angle: float) -> npt.NDArray[np.int32]:
    points = [
        (center[0] + radius * math.cos(angle + 2 * math.pi * i / sides),
         center[1] + radius * math.sin(angle + 2 * math.pi * i / sides))
        for i in range(sides)
    ]
    return np.asarray(points, dtype=np.int32)


def render_scene(
    label: str,
    rng: np.random.Generator,
    *,
    size: int = 64,
    conditions: SceneConditions = SceneConditions(),
) -> npt.NDArray[np.uint8]:
    """Render one ``size`` x ``size`` BGR image of ``label``.

    Raises:
        ValueError: ``label`` is not one of :data:`SCENE_CLASSES`.
    """
    if label not in SCENE_CLASSES + NOVEL_CLASSES:
        raise ValueError(f"unknown scene class {label!r}; choose from {', '.join(SCENE_CLASSES + NOVEL_CLASSES)}")
    base = rng.uniform(40, 120, size=3)
    gradient = np.linspace(-20, 20, size, dtype=np.float32)
    canvas = np.empty((size, size, 3), dtype=np.float32)
    canvas[:] = base
    canvas += gradient[np.newaxis, :, np.newaxis] if rng.random() < 0.5 else gradient[:, np.newaxis, np.newaxis]
    # The object is always brighter than the background, so the class is in the shape.
    colour = tuple(float(c) for c in rng.uniform(150, 255, size=3))
    radius = size * rng.uniform(0.22, 0.34)
    center = (size / 2 + rng.uniform(-0.12, 0.12) * size, size / 2 + rng.uniform(-0.12, 0.12) * size)
    angle = rng.uniform(0, 2 * math.pi)
    image: npt.NDArray[np.float32] = canvas.copy()
    if label == "circle":
        cv2.circle(image, (round(center[0]), round(center[1])), round(radius), colour, thickness=-1, lineType=cv2.LINE_AA)
    elif label == "square":
        cv2.fillPoly(image, [_polygon(center, radius * 1.15, 4, angle)], colour, lineType=cv2.LINE_AA)
    elif label == "triangle":
        cv2.fillPoly(image, [_polygon(center, radius * 1.25, 3, angle)], colour, lineType=cv2.LINE_AA)
    elif label == "star":
        outer, inner = _polygon(center, radius * 1.2, 5, angle), _polygon(center, radius * 0.5, 5, angle + math.pi / 5)
        points = np.stack([outer, inner], axis=1).reshape(-1, 2)  # alternate outer and inner corners
        cv2.fillPoly(image, [points], colour, lineType=cv2.LINE_AA)
    else:
        thickness = max(2, round(radius * 0.45))
        for theta in (angle, angle + math.pi / 2):
            dx, dy = radius * math.cos(theta), radius * math.sin(theta)
            cv2.line(image, (round(center[0] - dx), round(center[1] - dy)),
                     (round(center[0] + dx), round(center[1] + dy)), colour, thickness, lineType=cv2.LINE_AA)
    image *= conditions.brightness
    if conditions.blur_sigma > 0:
        image = np.asarray(cv2.GaussianBlur(image, (0, 0), conditions.blur_sigma), dtype=np.float32)
    if conditions.noise_std > 0:
        image = image + rng.normal(0, conditions.noise_std, size=image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def render_frame(
    label: str,
    rng: np.random.Generator,
    *,
    width: int = 640,
    height: int = 480,
    conditions: SceneConditions = SceneConditions(),
) -> npt.NDArray[np.uint8]:
    """A camera-sized frame: a square scene centred on a dark border (like a letterboxed camera)."""
    side = min(width, height)
    scene = render_scene(label, rng, size=side, conditions=conditions)
    frame = np.full((height, width, 3), 30, dtype=np.uint8)
    y0, x0 = (height - side) // 2, (width - side) // 2
    frame[y0 : y0 + side, x0 : x0 + side] = scene
    return frame


class SyntheticSource:
    """A simulated camera: a :class:`~agent.capture.source.FrameSource` rendering scenes.

    The class changes every ``frames_per_scene`` frames; ``conditions`` can be changed
    while running to simulate a shift (a dimmer, blurrier world).
    """

    def __init__(self, *, seed: int = 0, width: int = 640, height: int = 480, frames_per_scene: int = 15,
                 conditions: SceneConditions = SceneConditions(), frame_interval_s: float = 0.0) -> None:
        self.frame_interval_s = frame_interval_s
        self._next_at = 0.0
        self._rng = np.random.default_rng(seed)
        self.width, self.height = width, height
        self.frames_per_scene = frames_per_scene
        self.conditions = conditions
        self._count = 0
        self._rendered_at = -1
        self._frame: npt.NDArray[np.uint8] | None = None
        self.reconnects = 0  # a simulated camera never goes away

    def grab(self) -> bool:
        """Advance the simulated clock by one frame; rendering waits for :meth:`retrieve`."""
        if self.frame_interval_s:
            # Pace like a real camera so simulated devices do not burn the CPU.
            wait_s = self._next_at - time.monotonic()
            if wait_s > 0:
                time.sleep(wait_s)
            self._next_at = max(self._next_at, time.monotonic()) + self.frame_interval_s
        self._count += 1
        return True

    def retrieve(self) -> npt.NDArray[np.uint8] | None:
        scene = (self._count - 1) // self.frames_per_scene
        if self._frame is None or scene != self._rendered_at:
            label = SCENE_CLASSES[int(self._rng.integers(len(SCENE_CLASSES)))]
            self._frame = render_frame(label, self._rng, width=self.width, height=self.height,
                                       conditions=self.conditions)
            self._rendered_at = scene
        return self._frame

    def read(self) -> npt.NDArray[np.uint8] | None:
        self.grab()
        return self.retrieve()

    def close(self) -> None:
        pass


def write_video(path: str, *, frames: int = 300, fps: float = 15.0, seed: int = 0, width: int = 640,
                height: int = 480, frames_per_scene: int = 15) -> None:
    """Write an MJPG video of changing scenes (for demos and benchmarks).

    Raises:
        RuntimeError: OpenCV has no MJPG writer on this machine.
    """
    writer = cv2.VideoWriter(path, cv2.VideoWriter.fourcc(*"MJPG"), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write MJPG video to {path}")
    source = SyntheticSource(seed=seed, width=width, height=height, frames_per_scene=frames_per_scene)
    try:
        for _ in range(frames):
            frame = source.read()
            assert frame is not None
            writer.write(frame)
    finally:
        writer.release()
