"""Shared fixtures: real broker, real database, a control plane, a trained model.

* ``mqtt_url``: EDGEFLEET_TEST_MQTT_URL, else the machine's Mosquitto on :1883,
  else a private ``mosquitto`` process, else the embedded amqtt broker.
* ``database_url``: a fresh PostgreSQL database per test when
  EDGEFLEET_TEST_DATABASE_URL is set (dropped afterwards), else a SQLite file.
* ``topic_prefix``: unique per test, so tests never see each other's messages.

With EDGEFLEET_REQUIRE_SERVICES=1 (CI) a missing service fails the run.

Tests that use a service fixture are marked ``integration`` here, so
``pytest -m "not integration"`` (``make check``) runs only what needs no broker,
database, agent process or trained model; modules that start processes of their own
mark themselves.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.services import (
    REQUIRE_SERVICES,
    create_postgres_database,
    drop_postgres_database,
    resolve_broker_url,
)

# pytest-xdist workers start with COLUMNS=80 in their environment, and a Rich console built at
# import time would keep that width for good; CLI tests set the width they want per call.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.pop("COLUMNS", None)

# Fixtures that reach a real service, start processes or train a model.
SERVICE_FIXTURES = frozenset({"mqtt_url", "database_url", "control_plane", "api", "trained_model"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SERVICE_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def mqtt_url() -> Iterator[str]:
    try:
        url, private = resolve_broker_url()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    if url:
        yield url
        if private is not None:
            private.stop()
        return
    from cloud.core.broker import EmbeddedBroker

    broker = EmbeddedBroker(access=None)  # open: these tests connect without credentials
    broker.start()
    yield broker.url
    broker.stop()


@pytest.fixture
def database_url(tmp_path: Path) -> Iterator[str]:
    admin_url = os.environ.get("EDGEFLEET_TEST_DATABASE_URL")
    if not admin_url:
        if REQUIRE_SERVICES:
            pytest.fail("EDGEFLEET_REQUIRE_SERVICES=1 but EDGEFLEET_TEST_DATABASE_URL is not set")
        yield f"sqlite:///{tmp_path / 'edgefleet.db'}"
        return
    try:
        url, name = create_postgres_database(admin_url)
    except Exception as exc:
        pytest.fail(f"PostgreSQL at {admin_url} is not usable: {exc}")
    yield url
    drop_postgres_database(admin_url, name)


@pytest.fixture
def topic_prefix() -> str:
    return f"t-{uuid.uuid4().hex[:10]}/ef/v1"


@pytest.fixture
def control_plane(tmp_path: Path, mqtt_url: str, database_url: str, topic_prefix: str):
    """A running control plane (API on a free port) on the test's broker and database."""
    from cloud.core.config import Settings
    from cloud.server import ControlPlane

    settings = Settings(data_dir=tmp_path / "cloud", database_url=database_url, mqtt_url=mqtt_url,
                        topic_prefix=topic_prefix, api_port=0)
    plane = ControlPlane(settings)
    plane.start()
    plane.serve_http_in_thread()
    yield plane
    plane.stop()


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory: pytest.TempPathFactory):
    """A small model trained once per session: (onnx_path, labels, dataset_id)."""
    from tests.support.models import train_tiny_model

    return train_tiny_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="session")
def trained_detector(tmp_path_factory: pytest.TempPathFactory):
    """A grid detector trained once per session on synthetic scenes (``TrainedDetector``)."""
    from tests.support.models import train_scene_detector

    return train_scene_detector(tmp_path_factory.mktemp("scenes"), tmp_path_factory.mktemp("detector"))


@pytest.fixture
def engine(database_url: str):
    """A migrated database engine on the test's database, without a control plane."""
    from cloud.core.db import make_engine, migrate

    migrate(database_url)
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def api(control_plane):
    """An HTTP client for the control plane's API with full (admin) rights.

    Tests use this rather than building clients, so credentials live in one place.
    """
    import httpx

    with httpx.Client(base_url=control_plane.base_url, timeout=15, headers=control_plane_admin_headers(control_plane)) as client:
        yield client


def control_plane_admin_headers(plane) -> dict[str, str]:
    """Headers that authenticate as an admin: one admin API token per control plane, made on first use."""
    token = getattr(plane, "_test_admin_token", None)
    if token is None:
        from sqlmodel import Session

        from cloud.security.tables import Role
        from cloud.security.tokens import create_api_token

        with Session(plane.engine) as session:
            token, _ = create_api_token(session, name="tests admin", role=Role.ADMIN)
        plane._test_admin_token = token
    return {"Authorization": f"Bearer {token}"}
