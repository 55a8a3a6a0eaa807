"""Reconnect delays: exponential with jitter, so a fleet that lost its broker at the
same moment does not reconnect in lock-step and knock it over again."""

from __future__ import annotations

import random


def jittered_backoff_s(attempt: int, *, min_s: float, max_s: float, rng: random.Random) -> float:
    """Delay before reconnect ``attempt`` (0-based): uniform in [cap/2, cap], cap = min_s * 2**attempt <= max_s."""
    cap = min(max_s, min_s * (2 ** min(attempt, 30)))
    return float(cap / 2 + rng.uniform(0, cap / 2))
