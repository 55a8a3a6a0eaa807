"""Browser fixtures: Playwright driving the system Chromium against a live control plane.

Playwright never downloads a browser here (no ``playwright install``): it launches
``/usr/bin/chromium`` from the Debian packages that ``make test`` / ``.ci/run``
install when missing. A missing browser fails the run; it never skips silently.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloud.security.tables import Role
from tests.ui.helpers import Fleet, make_token

CHROMIUM = os.environ.get("EDGEFLEET_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "ui"


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        pytest.fail(f"no Chromium at {CHROMIUM}: run `make test` (it installs the Debian packages chromium and "
                    "chromium-driver) or `apt-get install -y chromium chromium-driver`")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


@pytest.fixture
def screenshot() -> Any:
    """``screenshot(page, name)`` saves a full-page PNG under test-artifacts/ui/."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    def take(page: Any, name: str) -> Path:
        path = ARTIFACTS / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return take


@pytest.fixture
def fleet(control_plane, api, tmp_path: Path) -> Iterator[Fleet]:
    # The simulated devices report a few windows, then stay silent while pages are checked: keep them
    # online until they say goodbye (liveness expiry has its own test, tests/cli/test_liveness.py).
    control_plane.settings.offline_after_intervals = 100_000
    simulated = Fleet(control_plane, api, tmp_path / "releases")
    try:
        yield simulated
    finally:
        simulated.stop()


@pytest.fixture
def tokens(control_plane) -> dict[str, str]:
    return {role.value: make_token(control_plane, role, f"{role.value} user") for role in
            (Role.VIEWER, Role.OPERATOR)}


@pytest.fixture
def login(browser, control_plane) -> Any:
    """``login(token)`` opens a fresh browser context logged in with ``token``; returns its page."""
    contexts: list[Any] = []

    def open_page(token: str) -> Any:
        context = browser.new_context(base_url=control_plane.base_url, viewport={"width": 1280, "height": 900})
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(20_000)
        page.goto("/ui/login")
        page.get_by_label("API token").fill(token)
        page.get_by_role("button", name="Log in").click()
        page.wait_for_url("**/ui/fleet")
        return page

    yield open_page
    for context in contexts:
        context.close()
