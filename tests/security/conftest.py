"""A control plane with chosen settings, for the hardening tests (tests/conftest.py has the default one)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture
def plane_with(tmp_path: Path, mqtt_url: str, database_url: str, topic_prefix: str) -> Iterator[Callable[..., Any]]:
    """``plane_with(max_request_bytes=...)``: a running control plane (API on a free port) with those settings."""
    from cloud.core.config import Settings
    from cloud.server import ControlPlane

    started: list[ControlPlane] = []

    def start(**overrides: Any) -> ControlPlane:
        settings = Settings(data_dir=tmp_path / "cloud", database_url=database_url, mqtt_url=mqtt_url,
                            topic_prefix=topic_prefix, api_port=0, **overrides)
        plane = ControlPlane(settings)
        plane.start()
        plane.serve_http_in_thread()
        started.append(plane)
        return plane

    yield start
    for plane in started:
        plane.stop()
