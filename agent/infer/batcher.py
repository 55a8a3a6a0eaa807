"""Which cameras' frames go into the next micro-batch, and when it runs: the pure core of serving.

A shared model serves many cameras. Each camera hands over only its newest frame (its
slot keeps one), so a batch holds at most one frame per camera and latency cannot grow
with a backlog. The planner decides two things from the frames that are waiting:

* **when**: run as soon as the batch is full (``max_batch``, or every attached camera has
  a frame), else once the oldest waiting frame has waited ``deadline_s``: a lone camera
  never waits longer than the deadline for batch-mates that are not coming;
* **who**, when more cameras wait than a batch holds: the least recently served camera
  first (round-robin), the oldest waiting frame breaking ties. A camera delivering
  frames fast cannot starve a slow one: its frame replaces itself in the slot, it never
  queues up a claim on more batch places than one, and once served it goes to the back.

No clock, no threads: :class:`BatchPlanner` is given the time, so tests drive it with a
fake clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class BatchSettings:
    """From the firmware profile (``max_batch``, ``batch_deadline_ms``), overridable in the agent config."""

    max_batch: int = 8
    deadline_s: float = 0.015
    # Inference threads taking batches from the one loaded model (runtimes allow concurrent runs
    # on one session): a second core can run a batch while the first runs another.
    workers: int = 1

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.workers < 1:
            raise ValueError("max_batch and workers must be at least 1")
        if self.deadline_s < 0:
            raise ValueError("the batch deadline cannot be negative")


@dataclass(frozen=True)
class WaitingFrame:
    """A camera whose newest frame waits for the model; ``ready_s`` is when it was handed over."""

    camera: str
    ready_s: float


@dataclass(frozen=True)
class BatchPlan:
    """Run ``cameras`` now (in this order), or, when empty, wait at most ``wait_s`` and ask again."""

    cameras: tuple[str, ...] = ()
    wait_s: float | None = None


@dataclass
class BatchPlanner:
    settings: BatchSettings
    # The batch number in which each camera was last served (absent: never served yet).
    _served_in: dict[str, int] = field(default_factory=dict)
    _batches: int = 0

    def plan(self, waiting: Sequence[WaitingFrame], *, attached: int, now_s: float) -> BatchPlan:
        """The next batch out of ``waiting`` (one entry per camera), ``attached`` cameras in all."""
        if not waiting:
            return BatchPlan(wait_s=None)
        full = min(self.settings.max_batch, max(attached, 1))
        oldest_ready_s = min(frame.ready_s for frame in waiting)
        waited_s = now_s - oldest_ready_s
        if len(waiting) < full and waited_s < self.settings.deadline_s:
            return BatchPlan(wait_s=self.settings.deadline_s - waited_s)
        order = sorted(waiting, key=lambda frame: (self._served_in.get(frame.camera, -1), frame.ready_s,
                                                   frame.camera))
        chosen = tuple(frame.camera for frame in order[: self.settings.max_batch])
        self._batches += 1
        for camera in chosen:
            self._served_in[camera] = self._batches
        return BatchPlan(cameras=chosen)

    def forget(self, camera: str) -> None:
        """A camera was detached: drop its round-robin position."""
        self._served_in.pop(camera, None)
