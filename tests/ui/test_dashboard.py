"""The dashboard in a real browser (system Chromium) on a live control plane and a simulated fleet.

Every test saves screenshots of the pages it visits under test-artifacts/ui/.
"""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.support.services import wait_for

pytestmark = pytest.mark.integration

# Small sample minimums so the gates decide in seconds on a 6-device simulated fleet.
FAST_GATES = {"min_frames": 20, "min_latency_windows": 1, "probation_min_windows": 1, "gate_wait_s": 600,
              "control_window_s": 120}


def _spec(fleet: Any, *, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "release": {"package_id": fleet.v2.package_id},
        "target": {"all_devices": True},
        # One canary per stratum, then a pause for approval; then everyone.
        "stages": [{"count": 2, "require_approval": True}, {"percent": 100}],
        "soak_s": 1,
        "gates": FAST_GATES,
    }


def _start_rollout_from_ui(page: Page, spec: dict[str, Any]) -> str:
    page.goto("/ui/rollouts")
    form = page.locator("#new-rollout")
    if form.get_attribute("open") is None:
        form.locator("summary").first.click()
    form.locator("details summary", has_text="Advanced").click()
    page.get_by_label("Rollout spec").fill(json.dumps(spec))
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Start rollout").click()
    page.wait_for_url(re.compile(r".*/ui/rollouts/[^/?]+\?message=.*"))
    expect(page.get_by_role("status").filter(has_text="rollout started")).to_be_visible()
    return page.url.split("/ui/rollouts/")[1].split("?")[0]


def _state(api: Any, rollout_id: str) -> str:
    return str(api.get(f"/api/v1/rollouts/{rollout_id}").json()["state"])


def test_fleet_page_lists_devices_filters_and_updates_live(fleet, login, tokens, api, screenshot) -> None:
    page = login(tokens["viewer"])
    rows = page.locator("#fleet-table tbody tr")
    expect(rows).to_have_count(len(fleet.all_ids))
    for device_id in fleet.all_ids:
        row = page.locator(f'tr[data-device="{device_id}"]')
        expect(row).to_contain_text("online")
        expect(row).to_contain_text(fleet.v1.model_version)
    expect(page.get_by_test_id("count-online")).to_have_text(str(len(fleet.all_ids)))
    screenshot(page, "fleet")

    # Search and filters apply as you type, and the URL keeps them.
    page.get_by_label("Search").fill("rpi5")
    expect(rows).to_have_count(len(fleet.device_ids["rpi5-arm64"]))
    assert "q=rpi5" in page.url
    page.get_by_label("Search").fill("")
    page.get_by_label("Profile").select_option("x86-64-avx2")
    expect(rows).to_have_count(len(fleet.device_ids["x86-64-avx2"]))
    page.get_by_label("Profile").select_option("")

    # Live: a device drops off and the page shows it without a reload.
    page.evaluate("window.__noReload = true")
    gone = fleet.device_ids["x86-64-avx2"][0]
    fleet.sim_for(gone).go_offline(gone, mode="graceful")
    expect(page.locator(f'tr[data-device="{gone}"] td').first).to_have_text("offline", timeout=15_000)
    assert page.evaluate("window.__noReload") is True
    page.get_by_label("Status").select_option("offline")
    expect(rows).to_have_count(1)
    expect(page.get_by_test_id("count-offline")).to_have_text("1")
    assert page.evaluate("window.__noReload") is True
    screenshot(page, "fleet-offline-filter")


def test_device_model_and_alert_pages_render(fleet, login, tokens, screenshot) -> None:
    page = login(tokens["viewer"])
    device_id = fleet.device_ids["rpi5-arm64"][0]
    page.get_by_role("link", name=device_id).click()
    expect(page.get_by_role("heading", name=f"Device {device_id}")).to_be_visible()
    # Charts fill in live as telemetry windows arrive (at least two points make a line).
    expect(page.locator('svg[data-chart="chart-fps"] polyline')).to_have_count(1, timeout=15_000)
    expect(page.locator('svg[data-chart="chart-latency"] polyline')).to_have_count(2)
    expect(page.get_by_role("img", name="Frames per second")).to_be_visible()
    expect(page.locator("#update-check")).to_have_text("no errors reported")
    expect(page.locator("section", has=page.get_by_role("heading", name="Recent windows")).locator("tbody tr").first
           ).to_contain_text(fleet.v1.model_version)
    screenshot(page, "device")

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Models").click()
    expect(page.locator(f'tr[data-model="{fleet.v2.model_version}"]')).to_contain_text("accuracy")
    expect(page.locator(f'tr[data-model="{fleet.v1.model_version}"] td.num')).to_have_text(str(len(fleet.all_ids)))
    screenshot(page, "models")
    page.get_by_role("link", name=fleet.v1.model_version).click()
    expect(page.locator("#slices-table")).to_contain_text("dark")
    expect(page.get_by_role("heading", name="Lineage")).to_be_visible()
    expect(page.get_by_role("link", name=device_id)).to_be_visible()
    screenshot(page, "model")

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Alerts").click()
    expect(page.get_by_role("heading", name="Drift alerts")).to_be_visible()
    screenshot(page, "alerts")


def test_rollout_started_from_the_ui_progresses_with_gate_evidence(fleet, login, tokens, api, screenshot) -> None:
    page = login(tokens["operator"])
    rollout_id = _start_rollout_from_ui(page, _spec(fleet, name="ui canary"))

    # Stage 1 (one canary per stratum) installs, passes its gates and waits for approval;
    # the page follows live, and shows the per-stratum evidence behind the decision.
    expect(page.get_by_test_id("rollout-state")).to_have_text("awaiting approval", timeout=120_000)
    evidence = page.locator("#gate-evidence table.evidence")
    expect(evidence).to_have_count(2)
    for profile in fleet.device_ids:
        table = page.locator(f'#gate-evidence table[data-stratum^="{profile}"]')
        expect(table).to_be_visible()
        expect(table.locator("tbody tr")).not_to_have_count(0)
        expect(table.locator("tbody")).to_contain_text("pass")
    expect(page.locator("#decisions-table")).to_contain_text("requires approval")
    screenshot(page, "rollout-awaiting-approval")

    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Approve next stage").click()
    expect(page.get_by_test_id("rollout-state")).to_have_text("completed", timeout=120_000)
    expect(page.get_by_test_id("rollout-stage")).to_have_text("2 of 2")
    expect(page.locator('#decisions-table tr[data-decision="operator_approve"]')).to_contain_text("operator:operator user")
    screenshot(page, "rollout-completed")
    devices = api.get("/api/v1/devices").json()
    assert {d["running_model_version"] for d in devices} == {fleet.v2.model_version}

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Rollouts").click()
    expect(page.locator(f'tr[data-rollout="{rollout_id}"]')).to_contain_text("completed")
    screenshot(page, "rollouts")


def test_abort_from_the_ui_rolls_the_canary_back(fleet, login, tokens, api, screenshot) -> None:
    page = login(tokens["operator"])
    rollout_id = _start_rollout_from_ui(page, _spec(fleet, name="ui abort"))
    expect(page.get_by_test_id("rollout-state")).to_have_text("awaiting approval", timeout=120_000)
    canaries = [d["device_id"] for d in api.get(f"/api/v1/rollouts/{rollout_id}/devices").json()
                if d["state"] == "succeeded"]
    assert len(canaries) == 2
    assert all(api.get(f"/api/v1/devices/{c}").json()["running_model_version"] == fleet.v2.model_version
               for c in canaries)

    # Dismissing the confirmation changes nothing.
    page.once("dialog", lambda dialog: dialog.dismiss())
    page.get_by_role("button", name="Abort and roll back").click()
    expect(page.get_by_test_id("rollout-state")).to_have_text("awaiting approval")
    assert _state(api, rollout_id) == "awaiting_approval"

    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Abort and roll back").click()
    expect(page.get_by_role("status").filter(has_text="abort requested")).to_be_visible()
    expect(page.get_by_test_id("rollout-state")).to_have_text("aborted", timeout=120_000)
    for canary in canaries:
        expect(page.locator(f'#rollout-devices tr[data-device="{canary}"]')).to_contain_text("rolled back")
    expect(page.locator('#decisions-table tr[data-decision="operator_abort"]')).to_be_visible()
    screenshot(page, "rollout-aborted")
    wait_for(lambda: all(d["running_model_version"] == fleet.v1.model_version for d in api.get("/api/v1/devices").json()),
             30, what="every device back on the previous version")

    # The device page's install history shows the install and the rollback.
    page.goto(f"/ui/devices/{canaries[0]}")
    history = page.locator("section", has=page.get_by_role("heading", name="Install history")).locator("tbody tr")
    expect(history).to_have_count(2)
    expect(history.filter(has_text=fleet.v1.package_id)).to_have_count(1)
    expect(history.filter(has_text=fleet.v2.package_id)).to_have_count(1)
    screenshot(page, "device-after-rollback")


def test_viewer_sees_no_action_buttons_and_cannot_act(fleet, login, tokens, api, control_plane, screenshot) -> None:
    created = api.post("/api/v1/rollouts", json=_spec(fleet, name="viewer look"))
    assert created.status_code == 201, created.text
    rollout_id = created.json()["id"]

    page = login(tokens["viewer"])
    expect(page.get_by_test_id("whoami")).to_contain_text("viewer")
    page.goto("/ui/rollouts")
    expect(page.locator(f'tr[data-rollout="{rollout_id}"]')).to_be_visible()
    expect(page.get_by_role("button", name="Start rollout")).to_have_count(0)
    page.goto(f"/ui/rollouts/{rollout_id}")
    expect(page.get_by_test_id("rollout-state")).to_be_visible()
    expect(page.locator("[data-action]")).to_have_count(0)
    expect(page.get_by_role("group", name="Rollout actions")).to_have_count(0)
    screenshot(page, "rollout-as-viewer")

    # Hiding buttons is not the protection: a forged POST is refused by the dashboard and the API.
    # With the viewer session's own CSRF value (every page carries it, in the logout form).
    viewer_csrf = page.locator('input[name="csrf"]').first.get_attribute("value")
    forged = page.request.post(f"/ui/rollouts/{rollout_id}/abort", form={"csrf": viewer_csrf, "confirm": "yes"})
    assert "can view but not act" in forged.text()
    viewer_api = httpx.post(f"{control_plane.base_url}/api/v1/rollouts/{rollout_id}/abort",
                            headers={"authorization": f"Bearer {tokens['viewer']}"}, timeout=10)
    assert viewer_api.status_code == 403
    assert _state(api, rollout_id) not in ("aborting", "aborted")


def test_login_refuses_bad_tokens_and_logout_ends_the_session(browser, control_plane, tokens, screenshot) -> None:
    context = browser.new_context(base_url=control_plane.base_url)
    page = context.new_page()
    try:
        page.goto("/ui/models")
        expect(page).to_have_url(re.compile(r".*/ui/login\?next=%2Fui%2Fmodels"))
        page.get_by_label("API token").fill("efo_not-a-token")
        page.get_by_role("button", name="Log in").click()
        expect(page.get_by_role("alert")).to_have_text("unknown or revoked token")
        screenshot(page, "login-refused")
        page.get_by_label("API token").fill(tokens["operator"])
        page.get_by_role("button", name="Log in").click()
        expect(page).to_have_url(re.compile(r".*/ui/models$"))
        cookie = next(c for c in context.cookies() if c["name"] == "edgefleet_session")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        page.get_by_role("button", name="Log out").click()
        expect(page).to_have_url(re.compile(r".*/ui/login$"))
        page.goto("/ui/fleet")
        expect(page).to_have_url(re.compile(r".*/ui/login\?next=.*"))
    finally:
        context.close()


def _seed_drift(plane: Any, fleet: Any, device_id: str) -> dict[str, str]:
    """Rows as the drift monitor writes them: windows, an open alert, a sample, and the proposals it led to.

    The drift tests prove these rows are produced from real device windows;
    here they are the input the pages must show.
    """
    from datetime import UTC, datetime, timedelta

    import cv2
    import numpy as np
    from sqlmodel import Session

    from cloud.governance.tables import RetrainingProposal, RolloutProposal
    from cloud.monitor.tables import DriftAlert, DriftWindowRecord, SampleBlob, SampleRecord

    now = datetime.now(UTC)
    ok, jpeg = cv2.imencode(".jpg", np.full((48, 48, 3), 90, dtype=np.uint8))
    assert ok
    image = jpeg.tobytes()
    import hashlib

    digest = hashlib.sha256(image).hexdigest()
    with Session(plane.engine) as session:
        for index in range(6):
            ended = now - timedelta(seconds=60 * (6 - index))
            session.add(DriftWindowRecord(
                message_id=f"dw-{device_id}-{index}", device_id=device_id, model_version=fleet.v1.model_version,
                package_id=fleet.v1.package_id, window_seq=index, window_started_at=ended - timedelta(seconds=60),
                window_ended_at=ended, frames=300, frames_seen=300, features=["luma_mean"], histograms="",
                tested=True, p_value=0.5 if index < 3 else 1e-6, score=1.0 + index * 3, cusum=max(0, index - 2) * 5.0))
        session.add(DriftAlert(id="al-ui-1", device_id=device_id, package_id=fleet.v1.package_id,
                               model_version=fleet.v1.model_version, score=16.0, proposal_id="rp-ui-1",
                               evidence={"features": [{"name": "luma_mean", "p": 1e-6, "psi": 0.8}]}))
        session.add(SampleBlob(sha256=digest, device_id=device_id, content=image, size_bytes=len(image)))
        session.add(SampleRecord(message_id="smp-msg-ui-1", sample_id="smp-ui-0001", device_id=device_id,
                                 model_version=fleet.v1.model_version, sampler="drift", reason="window drifted",
                                 captured_at=now, predicted_label="circle", confidence=0.41, image_sha256=digest,
                                 image_bytes=len(image), image_width=48, image_height=48))
        session.add(RetrainingProposal(id="rp-ui-1", state="rollout_proposed", created_by="monitor",
                                       base_model_version=fleet.v1.model_version, alert_ids=["al-ui-1"],
                                       device_ids=[device_id], new_model_version=fleet.v2.model_version,
                                       new_package_id=fleet.v2.package_id, rollout_proposal_id="rop-ui-1",
                                       validation={"old_test_accuracy_after": 0.93, "drift_accuracy_after": 0.88}))
        session.add(RolloutProposal(id="rop-ui-1", retraining_proposal_id="rp-ui-1",
                                    model_version=fleet.v2.model_version, package_id=fleet.v2.package_id,
                                    device_ids=[device_id], reason="retrained after drift alerts al-ui-1"))
        session.commit()
    return {"alert": "al-ui-1", "proposal": "rp-ui-1", "rollout_proposal": "rop-ui-1"}


def test_drift_alerts_samples_and_proposals(fleet, login, tokens, api, control_plane, screenshot) -> None:
    device_id = fleet.device_ids["x86-64-avx2"][1]
    seeded = _seed_drift(control_plane, fleet, device_id)

    page = login(tokens["viewer"])
    page.goto(f"/ui/devices/{device_id}")
    expect(page.locator('svg[data-chart="chart-drift"] polyline')).to_have_count(2)
    expect(page.get_by_role("img", name=re.compile("Window p-value"))).to_be_visible()
    expect(page.locator(f'#device-alerts tr[data-alert="{seeded["alert"]}"]')).to_contain_text("open")
    sample = page.get_by_role("img", name=re.compile("sample smp-ui-0001"))
    expect(sample).to_be_visible()
    # The JPEG really loads through the dashboard (the API itself needs a bearer token).
    page.wait_for_function("img => img.complete && img.naturalWidth === 48", arg=sample.element_handle())
    screenshot(page, "device-drift")

    page.goto("/ui/alerts")
    expect(page.locator(f'tr[data-alert="{seeded["alert"]}"]')).to_contain_text(device_id)
    expect(page.locator(f'tr[data-proposal="{seeded["proposal"]}"]')).to_contain_text(fleet.v2.model_version)
    expect(page.locator("[data-action]")).to_have_count(0)  # a viewer: no approve/reject buttons
    screenshot(page, "alerts-with-proposals")

    operator = login(tokens["operator"])
    operator.goto("/ui/alerts")
    row = operator.locator(f'tr[data-rollout-proposal="{seeded["rollout_proposal"]}"]')
    operator.once("dialog", lambda dialog: dialog.accept())
    row.get_by_role("button", name="Approve").click()
    operator.wait_for_url(re.compile(r".*/ui/rollouts/[^/?]+\?message=.*approved.*"))
    rollout_id = operator.url.split("/ui/rollouts/")[1].split("?")[0]
    assert api.get(f"/api/v1/rollouts/{rollout_id}").json()["device_count"] == 1
    proposals = api.get("/api/v1/governance/rollout-proposals").json()
    assert [p["state"] for p in proposals if p["id"] == seeded["rollout_proposal"]] == ["started"]

    operator.goto(f"/ui/models/{fleet.v2.model_version}")
    expect(operator.locator("#audit-table")).to_contain_text("rollout.approved")
    expect(operator.locator("#audit-table")).to_contain_text("operator:operator user")
    screenshot(operator, "model-lineage")
