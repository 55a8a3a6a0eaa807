"""Capture building blocks as plain objects: rate limiter, frame hand-off, reconnect backoff."""

from __future__ import annotations

import random
import threading

import numpy as np

from agent.capture import FrameItem, FrameSlot, RateLimiter
from agent.capture.scenes import SyntheticSource
from agent.uplink.backoff import jittered_backoff_s


def test_rate_limiter_keeps_the_target_rate_of_a_faster_feed() -> None:
    limiter = RateLimiter(target_fps=10.0)
    kept = [limiter.due(i / 30.0) for i in range(90)]  # 3 s of a 30 fps camera
    assert sum(kept) == 30 and kept[0]
    assert all(RateLimiter(0.0).due(t) for t in (0.0, 0.0, 0.001))


def test_rate_limiter_does_not_burst_after_a_stall() -> None:
    limiter = RateLimiter(target_fps=10.0)
    assert limiter.due(0.0)
    assert limiter.due(5.0)  # a 5 s stall: one frame, not fifty
    assert not limiter.due(5.05)
    assert limiter.due(5.1)


def test_skipped_frames_are_never_rendered() -> None:
    source = SyntheticSource(seed=1, frames_per_scene=1)
    for _ in range(5):
        assert source.grab()
    assert source._frame is None  # grab alone decoded (rendered) nothing
    assert source.retrieve() is not None


def test_every_policy_queues_without_overwriting_and_blocks_when_full() -> None:
    slot: FrameSlot[int] = FrameSlot("every", depth=2)
    assert slot.put(1) and slot.put(2)
    third = threading.Thread(target=slot.put, args=(3,))
    third.start()
    third.join(timeout=0.2)
    assert third.is_alive(), "a full queue makes the capture thread wait"
    assert slot.take(0.1) == 1
    third.join(timeout=2)
    assert [slot.take(0.1), slot.take(0.1)] == [2, 3]
    assert (slot.offered, slot.overwritten) == (3, 0)
    slot.close()
    assert not slot.put(4)


def test_newest_policy_overwrites_and_counts() -> None:
    slot: FrameSlot[FrameItem] = FrameSlot("newest", depth=5)
    for seq in range(1, 4):
        slot.put(FrameItem(seq=seq, frame=np.zeros((2, 2, 3), dtype=np.uint8)))
    item = slot.take(0.1)
    assert item is not None and item.seq == 3 and slot.overwritten == 2


def test_reconnect_backoff_grows_is_capped_and_jittered() -> None:
    rng = random.Random(7)
    delays = [jittered_backoff_s(n, min_s=0.5, max_s=8.0, rng=rng) for n in range(8)]
    for n, delay in enumerate(delays):
        cap = min(8.0, 0.5 * 2**n)
        assert cap / 2 <= delay <= cap
    # Two devices that lost the broker together do not come back in lock-step.
    a = [jittered_backoff_s(3, min_s=0.5, max_s=8.0, rng=random.Random(1)) for _ in range(1)]
    b = [jittered_backoff_s(3, min_s=0.5, max_s=8.0, rng=random.Random(2)) for _ in range(1)]
    assert a != b
