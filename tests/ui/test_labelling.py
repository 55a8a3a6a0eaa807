"""Labelling from the dashboard, in a real browser: each sample shows its id, prediction and
confidence with a select of its model's classes; a label (and a relabel) lands in the sample's
history and in the audit log under the name of the operator's API token."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from playwright.sync_api import expect
from sqlmodel import Session

from tests.ui.helpers import LABELS, make_release

pytestmark = pytest.mark.integration


def _seed_sample(plane: Any, device_id: str, model_version: str, sample_id: str) -> None:
    from cloud.monitor.tables import SampleBlob, SampleRecord

    ok, jpeg = cv2.imencode(".jpg", np.full((48, 48, 3), 120, dtype=np.uint8))
    assert ok
    image = jpeg.tobytes()
    digest = hashlib.sha256(image).hexdigest()
    with Session(plane.engine) as session:
        session.add(SampleBlob(sha256=digest, device_id=device_id, content=image, size_bytes=len(image)))
        session.add(SampleRecord(message_id=f"msg-{sample_id}", sample_id=sample_id, device_id=device_id,
                                 model_version=model_version, sampler="uncertainty", reason="margin 0.08",
                                 captured_at=datetime.now(UTC), predicted_label="circle", confidence=0.37,
                                 image_sha256=digest, image_bytes=len(image), image_width=48, image_height=48))
        session.commit()


def test_label_and_relabel_a_sample_from_the_device_page(control_plane, api, login, tokens, tmp_path: Path,
                                                         screenshot) -> None:
    release = make_release(control_plane, tmp_path / "models")
    assert api.post("/api/v1/devices", json={"id": "cam-ui-l1", "hardware_profile": "x86-64-avx2"}).status_code == 201
    _seed_sample(control_plane, "cam-ui-l1", release.model_version, "smp-ui-label-1")

    viewer = login(tokens["viewer"])
    viewer.goto("/ui/devices/cam-ui-l1")
    card = viewer.locator('li[data-sample="smp-ui-label-1"]')
    expect(card).to_contain_text("smp-ui-label-1")
    expect(card.locator(".sample-prediction")).to_have_text("circle")
    expect(card.locator(".sample-confidence")).to_have_text("0.37")
    expect(card.locator("form.label-form")).to_have_count(0)  # a viewer looks, it does not label

    page = login(tokens["operator"])
    page.goto("/ui/devices/cam-ui-l1")
    card = page.locator('li[data-sample="smp-ui-label-1"]')
    expect(card.get_by_role("img", name=re.compile("sample smp-ui-label-1"))).to_be_visible()
    expect(card.locator(".sample-label")).to_have_text("unlabelled")
    select = card.get_by_label("label for sample smp-ui-label-1")
    expect(select.locator("option")).to_have_text(LABELS)  # exactly the model's classes
    select.select_option("square")
    card.get_by_role("button", name="Label").click()
    page.wait_for_url(re.compile(r".*/ui/devices/cam-ui-l1\?message=.*"))
    expect(page.locator(".flash.ok")).to_have_text("sample smp-ui-label-1 labelled square")
    card = page.locator('li[data-sample="smp-ui-label-1"]')
    expect(card.locator(".sample-label")).to_have_text("label square by operator:operator user")

    card.get_by_label("label for sample smp-ui-label-1").select_option("triangle")
    card.get_by_role("button", name="Relabel").click()
    page.wait_for_url(re.compile(r".*/ui/devices/cam-ui-l1\?message=.*relabelled.*"))
    expect(page.locator(".flash.ok")).to_have_text("sample smp-ui-label-1 relabelled from square to triangle")
    screenshot(page, "device-sample-labelled")

    # A class the model lacks (a tampered form) is refused with the valid ones named.
    card = page.locator('li[data-sample="smp-ui-label-1"]')
    card.locator("select option").first.evaluate("option => { option.value = 'hexagon'; }")
    card.get_by_label("label for sample smp-ui-label-1").select_option(index=0)
    card.get_by_role("button", name="Relabel").click()
    page.wait_for_url(re.compile(r".*/ui/devices/cam-ui-l1\?error=.*"))
    expect(page.locator(".flash.err")).to_contain_text("valid classes: circle, square, triangle, background")
    # A form without the page's CSRF value is refused too.
    forged = page.request.post("/ui/samples/smp-ui-label-1/label", form={"label": "circle", "csrf": "forged"},
                               max_redirects=0)
    assert forged.status == 303 and "error=" in forged.headers["location"]

    sample = api.get("/api/v1/samples/smp-ui-label-1").json()
    assert sample["label"] == "triangle"
    assert [(h["actor"], h["from"], h["to"]) for h in sample["history"]] == [
        ("operator:operator user", None, "square"), ("operator:operator user", "square", "triangle")]
    events = api.get("/api/v1/governance/audit", params={"action": "samples.labelled"}).json()
    assert [(e["actor"], e["subject_id"], e["details"]["labels"]) for e in events] == [
        ("operator:operator user", "smp-ui-label-1", {"smp-ui-label-1": "square"}),
        ("operator:operator user", "smp-ui-label-1", {"smp-ui-label-1": "triangle"})]

    # ... and the dashboard's audit log shows it with the token's name.
    page.goto("/ui/models")
    rows = page.locator('#audit-log tr[data-audit-action="samples.labelled"]')
    expect(rows).to_have_count(2)
    expect(rows.first).to_contain_text("operator:operator user")
    expect(rows.first).to_contain_text("smp-ui-label-1")
    screenshot(page, "models-audit-log")
