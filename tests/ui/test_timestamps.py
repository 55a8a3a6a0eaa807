"""Every timestamp an operator reads on the main dashboard pages has one style:
``2026-12-05 18:20:03 UTC``. No ISO strings, no bare "3 min ago", no local 12-hour clocks."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import Any

import httpx
import pytest

from cloud.security.tables import Role
from cloud.timefmt import DISPLAY_PATTERN
from tests.support.services import wait_for
from tests.ui.helpers import PROFILES, dashboard_login, make_release, make_token, publish_reports

pytestmark = pytest.mark.integration

# Other ways of writing a moment that must not appear in what the page shows, once the
# well-formed stamps are taken out.
OTHER_STYLES = {
    "ISO 8601": re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}"),
    "relative only": re.compile(r"\b\d+ (s|min|h|d) ago\b"),
    "12-hour clock": re.compile(r"\b\d{1,2}:\d{2}(:\d{2})?\s?[AaPp]\.?[Mm]\b"),
    "a time of day without the one style": re.compile(r"\b\d{1,2}:\d{2}\b"),
}


class _VisibleText(HTMLParser):
    """The text a reader sees: element content, not attributes (a tooltip may say "3 min ago")."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self._hidden += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self._hidden -= 1

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.parts.append(data)


def _visible(html: str) -> str:
    parser = _VisibleText()
    parser.feed(html)
    return "\n".join(parser.parts)


def _check(path: str, html: str, *, at_least: int) -> None:
    text = _visible(html)
    found = DISPLAY_PATTERN.findall(text)
    assert len(found) >= at_least, f"{path}: expected at least {at_least} UTC timestamps, found {found}"
    rest = DISPLAY_PATTERN.sub("", text)
    for style, pattern in OTHER_STYLES.items():
        stray = [m.group(0) for m in pattern.finditer(rest)]
        assert not stray, f"{path} shows {style}: {stray[:5]}"


def test_every_timestamp_on_the_main_pages_has_the_one_style(control_plane, api: httpx.Client, tmp_path) -> None:
    release = make_release(control_plane, tmp_path / "v1")
    device_id = "x86-07"
    assert api.post("/api/v1/devices", json={"id": device_id, "hardware_profile": PROFILES[0]}).status_code == 201
    publish_reports(control_plane, device_id, model_version=release.model_version, windows=4)
    wait_for(lambda: len(api.get(f"/api/v1/devices/{device_id}/telemetry").json()) >= 4, 30,
             what="telemetry stored")
    created = api.post("/api/v1/rollouts", json={"name": "stamps", "release": {"package_id": release.package_id},
                                                 "target": {"all_devices": True}, "stages": [{"percent": 100}],
                                                 "soak_s": 3600})
    assert created.status_code == 201, created.text
    rollout_id = created.json()["id"]
    assert api.post(f"/api/v1/rollouts/{rollout_id}/cancel").status_code == 200

    token = make_token(control_plane, Role.VIEWER)
    with httpx.Client(base_url=control_plane.base_url, timeout=30) as client:
        assert dashboard_login(client, token, "/ui/fleet").status_code == 303
        pages: list[tuple[str, int]] = [
            ("/ui/fleet", 1),  # last seen
            (f"/ui/devices/{device_id}", 4 + 2 * 4),  # last seen, recent windows, each chart's range
            ("/ui/models", 1),
            (f"/ui/models/{release.model_version}", 0),
            ("/ui/rollouts", 2),  # created, finished
            (f"/ui/rollouts/{rollout_id}", 4),  # created, finished, ended at, decisions
            ("/ui/alerts", 0),
        ]
        for path, at_least in pages:
            for url in (path, f"{path}?partial=1"):
                response: Any = client.get(url)
                assert response.status_code == 200, (url, response.status_code)
                _check(url, response.text, at_least=at_least)
