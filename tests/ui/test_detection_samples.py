"""Detection samples in front of an operator: the device page draws each sample's boxes over
its image with labels and scores (the shadow candidate's dashed), and `edgefleet samples show`
lists them; the sample travels the real way (device collector, MQTT, ingest)."""

from __future__ import annotations

import json
from typing import Any

import cv2
import numpy as np
import pytest
from playwright.sync_api import expect
from typer.testing import CliRunner

from agent.contract import Topics
from agent.infer.detect import Detection
from agent.telemetry.samples import (
    BudgetLimits,
    SampleBudget,
    SampleCandidate,
    SampleCollector,
    ShadowDisagreementSampler,
)
from cloud.cli import app
from tests.support.services import wait_for
from tests.ui.helpers import acknowledged_publisher

pytestmark = pytest.mark.integration

DEVICE = "cam-ui-det"
# (x1, y1, x2, y2) in a 320x240 frame, label, score.
OBJECTS = [((20, 40, 120, 220), "person", 0.91), ((150, 120, 300, 200), "car", 0.74), ((200, 20, 260, 70), "dog", 0.31)]


def _scene() -> np.ndarray:
    """A street of coloured blocks where the boxes are, so the screenshot shows boxes on objects."""
    frame = np.full((240, 320, 3), (70, 90, 60), dtype=np.uint8)
    frame[160:, :] = (90, 90, 90)
    for (x1, y1, x2, y2), _, _ in OBJECTS:
        cv2.rectangle(frame, (x1 + 4, y1 + 4), (x2 - 4, y2 - 4), (40, 60, 200), thickness=-1)
    return frame


def _detections() -> tuple[Detection, ...]:
    labels = ["person", "car", "dog"]
    return tuple(Detection(x1=float(x1), y1=float(y1), x2=float(x2), y2=float(y2), class_id=labels.index(label),
                           label=label, score=score) for (x1, y1, x2, y2), label, score in OBJECTS)


def _publish_disagreement_sample(plane: Any) -> str:
    """The device side: the candidate missed the dog, so the disagreement sampler keeps the frame."""
    active = _detections()
    collector = SampleCollector([ShadowDisagreementSampler()], SampleBudget(BudgetLimits()), max_side=320)
    captured = collector.offer(SampleCandidate(
        frame_bgr=_scene(), probabilities=np.asarray([d.score for d in active]), label="person", now_s=1.0,
        detections=active, score_threshold=0.25, candidate_detections=active[:2], unmatched_boxes=1))
    assert captured is not None
    report = captured.to_report(DEVICE, upload="inline", model_version="detector-v1", package_id="pkg-det")
    with acknowledged_publisher(plane, DEVICE) as publish:
        publish(Topics(plane.settings.topic_prefix).samples(DEVICE), report.to_bytes())
    return report.sample_id


def test_the_device_page_draws_a_samples_boxes_and_the_cli_lists_them(control_plane, api, login, tokens,
                                                                       screenshot) -> None:
    assert api.post("/api/v1/devices", json={"id": DEVICE, "hardware_profile": "x86-64-avx2"}).status_code == 201
    sample_id = _publish_disagreement_sample(control_plane)
    stored = wait_for(lambda: api.get(f"/api/v1/samples/{sample_id}").json() if api.get(
        f"/api/v1/samples/{sample_id}").status_code == 200 else None, 30, what="the sample stored")
    assert [(b["model"], b["label"]) for b in stored["boxes"]] == [
        ("active", "person"), ("active", "car"), ("active", "dog"), ("candidate", "person"), ("candidate", "car")]
    assert stored["boxes"][0] == {"x1": 0.0625, "y1": 0.16667, "x2": 0.375, "y2": 0.91667, "label": "person",
                                  "score": 0.91, "model": "active"}

    page = login(tokens["viewer"])
    page.goto(f"/ui/devices/{DEVICE}")
    card = page.locator(f'li[data-sample="{sample_id}"]')
    expect(card).to_contain_text("disagreement")
    overlay = card.locator("svg.sample-boxes")
    expect(overlay).to_be_visible()
    expect(overlay.locator("g.box")).to_have_count(5)
    expect(overlay.locator("g.box-candidate")).to_have_count(2)
    expect(overlay.locator("g.box-active text")).to_have_text(["person 0.91", "car 0.74", "dog 0.31"])
    # The boxes sit where the objects are: the person's box spans 6-38 % of the width, 17-92 % of the height.
    image = card.locator("img").bounding_box()
    person = overlay.locator('g.box-active[data-label="person"] rect').bounding_box()
    assert image is not None and person is not None
    assert (person["x"] - image["x"]) / image["width"] == pytest.approx(0.0625, abs=0.02)
    assert (person["y"] + person["height"] - image["y"]) / image["height"] == pytest.approx(0.9167, abs=0.02)
    card.scroll_into_view_if_needed()
    screenshot(page, "device-sample-boxes")

    env = {"EDGEFLEET_SERVER": control_plane.base_url, "EDGEFLEET_TOKEN": tokens["viewer"], "COLUMNS": "200"}
    runner = CliRunner()
    as_json = runner.invoke(app, ["samples", "show", sample_id, "--json"], env=env)
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.output)["boxes"] == stored["boxes"]
    shown = runner.invoke(app, ["samples", "show", sample_id], env=env)
    assert shown.exit_code == 0, shown.output
    assert "boxes       5" in shown.output and "candidate car 0.74 (0.469, 0.500, 0.938, 0.833)" in shown.output
