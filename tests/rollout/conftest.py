"""Rollout test fixtures: a control plane with a fast engine (or none), and packaging helpers."""

from __future__ import annotations

import pytest

# Short ticks keep the integration tests quick; correctness never depends on them.
ENGINE_TICK_S = "0.2"


@pytest.fixture
def engine_in_plane() -> bool:
    """Whether the control plane runs its own rollout engine (engine-process tests override it)."""
    return True


@pytest.fixture
def plane(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, engine_in_plane: bool):
    monkeypatch.setenv("EDGEFLEET_ROLLOUT_TICK_S", ENGINE_TICK_S)
    monkeypatch.setenv("EDGEFLEET_ROLLOUT_ENGINE_ENABLED", "1" if engine_in_plane else "0")
    return request.getfixturevalue("control_plane")
