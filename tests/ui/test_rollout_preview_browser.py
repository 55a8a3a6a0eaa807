"""In a real browser (system Chromium): "Preview plan" shows the plan without a
confirmation dialog and without creating anything; "Start rollout" still asks."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.support.services import wait_for

pytestmark = pytest.mark.integration


def test_preview_shows_the_plan_without_asking_and_start_still_asks(fleet, login, tokens, api, screenshot) -> None:
    page = login(tokens["operator"])
    page.goto("/ui/rollouts")
    form = page.locator("#new-rollout")
    if form.get_attribute("open") is None:
        form.locator("summary").first.click()
    page.get_by_label("Package").select_option(fleet.v2.package_id)
    page.get_by_label("Stage sizes are").select_option("count")
    page.get_by_label("Stages (cumulative)").fill("2,6")
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.get_by_role("button", name="Preview plan").click()
    stages = page.locator("#preview-stages tbody tr")
    expect(stages).to_have_count(2)
    expect(stages.nth(0).locator("th")).to_have_text("1")
    expect(stages.nth(1).locator("th")).to_have_text("2")
    for profile in fleet.device_ids:
        expect(page.locator("#preview-packages")).to_contain_text(profile)
    expect(page.locator("#preview-packages")).to_contain_text(fleet.v2.package_id)
    assert dialogs == []
    assert api.get("/api/v1/rollouts").json() == []
    screenshot(page, "rollout-preview")
    # The form kept the choices, and starting still asks first (dismissed here: nothing starts).
    expect(page.get_by_label("Stages (cumulative)")).to_have_value("2,6")
    page.get_by_role("button", name="Start rollout").click()
    wait_for(lambda: page.evaluate("0") == 0 and dialogs, 15, what="the confirmation dialog")
    assert dialogs == ["Start this rollout?"]
    assert api.get("/api/v1/rollouts").json() == []
