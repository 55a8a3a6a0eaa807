"""Governed retraining of a detector, on a real database, broker and control plane.

A detector trained on synthetic scenes is released, with the drift reference its
detection build writes, to three cameras; two of them now film smaller objects. The
cameras (the real device code: model runtime, decoder, drift windows, samplers, MQTT)
send drift windows; the real monitor opens alerts for exactly the two shifted cameras
and one retraining proposal. The shifted cameras upload samples with the boxes they
found; the generator's ground truth labels them with boxes through the API; the
retraining adds them to a new dataset version, retrains the detector, validates it
(mAP@0.5 no worse on the old test split, better on the held-out shifted samples), builds
it through the pipeline's detection build and proposes a canary rollout, which starts on
approval; both shifted cameras install the retrained release, and under it their
windows test clean and their alerts clear.

Also: box labels that cannot be right are refused with what to fix.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from sqlalchemy import Engine
from sqlmodel import Session, col, select
from typer.testing import CliRunner

from agent.contract import PackageManifest, SampleBox, SampleReport
from agent.contract.drift import DEFAULT_WINDOW_FRAMES, DriftReference
from agent.infer.detect import detect
from agent.preprocess import preprocess
from cloud.cli import app
from cloud.cli.client import Exit
from cloud.core.timestamps import utc_now
from cloud.fleet.tables import Device, ModelVersion, Package
from cloud.governance.audit import list_events
from cloud.governance.labelling import LabelError, accept_labels, box_labels, label_history
from cloud.governance.tables import DatasetLineage
from cloud.monitor.tables import SampleBlob, SampleRecord
from cloud.security.tables import Role
from tests.drift.simdevice import (
    AS_TRAINED,
    DetectionWorld,
    SceneShift,
    SimDevice,
    dump,
    open_alert_devices,
    run_until_stored,
    start_fleet,
    stored_drift_windows,
)
from tests.support.jobs import wait_for_job
from tests.support.services import wait_for
from tests.ui.helpers import make_token

pytestmark = pytest.mark.integration

PROFILE = "x86-64-avx2"
CLASSES = ["circle", "square", "triangle"]
FRAME_W, FRAME_H = 200, 150
# The detection build calibrates the package's drift reference on windows of this many frames.
WINDOW_FRAMES = DEFAULT_WINDOW_FRAMES
DRIFT_WINDOWS = 4
# Enough for the default clear_windows (3) consecutive clean windows.
CLEAR_WINDOWS = 4


# -- box labels are checked, and the refusal says what to fix ---------------------------

def _model(session: Session, name: str, version: str, task: str | None) -> None:
    model = ModelVersion(name=name, version=version, dataset_id="ds-base", labels=CLASSES, onnx_path="/x",
                         onnx_sha256="0" * 64, hyperparameters={"task": task} if task else {})
    session.add(model)
    session.flush()
    assert model.id is not None
    session.add(Package(id=f"{version}-pkg", model_version_id=model.id, model_version=version,
                        hardware_profiles=[PROFILE], manifest_sha256="0" * 64, size_bytes=1, path="/x"))


def test_box_labels_are_checked_and_say_what_to_fix(engine: Engine) -> None:
    with Session(engine) as session:
        session.add(Device(id="cam-1"))
        _model(session, "det", "det-1", "detection")
        _model(session, "cls", "cls-1", None)
        for sample_id, version in (("s-det-0001", "det-1"), ("s-det-0002", "det-1"), ("s-cls-0001", "cls-1")):
            session.add(SampleRecord(message_id=f"m-{sample_id}", sample_id=sample_id, device_id="cam-1",
                                     model_version=version, package_id=f"{version}-pkg", sampler="random",
                                     captured_at=utc_now(), image_width=FRAME_W, image_height=FRAME_H))
        session.commit()

        def box(**fields: Any) -> dict[str, Any]:
            return {"label": "circle", "x1": 0.1, "y1": 0.1, "x2": 0.3, "y2": 0.4, **fields}

        refused = [
            ({"s-det-0001": [box(x2=1.2)]}, r"box 0 of sample s-det-0001 .* lies outside the frame"),
            ({"s-det-0001": [box(), box(x1=150, x2=250, y1=10, y2=40, units="pixels")]},
             r"box 1 of sample s-det-0001 .* outside the frame \(200x150 pixels\)"),
            ({"s-det-0001": [box(x1=0.3, x2=0.3)]}, r"has no area: it needs x2 > x1 and y2 > y1"),
            ({"s-det-0001": [box(y1=0.5, y2=0.4)]}, r"has no area"),
            ({"s-det-0001": [box(label="hexagon")]}, r"'hexagon' is not a class .* circle, square, triangle"),
            ({"s-det-0001": [box(units="inches")]}, r"units must be 'fraction' .* or 'pixels'"),
            ({"s-det-0001": [{"label": "circle", "x1": 0.1, "y1": 0.1}]}, r"needs numbers x1, y1, x2, y2"),
            ({"s-det-0001": [box(colour="red")]}, r"unknown fields colour"),
            ({"s-det-0001": "circle"}, r"detection model det-1: label it with a list of boxes"),
            ({"s-cls-0001": [box()]}, r"classifier model cls-1: label it with one class name"),
        ]
        for labels, message in refused:
            with pytest.raises(LabelError, match=message):
                accept_labels(session, labels, actor="alice")
        # Nothing of a refused batch was applied.
        assert {r.status for r in session.exec(select(SampleRecord))} == {"unlabelled"}

        # Pixels become fractions of the frame; an empty list says "no objects".
        changes = accept_labels(session, {"s-det-0001": [box(), box(label="square", x1=20, y1=15, x2=60, y2=75,
                                                                     units="pixels")],
                                          "s-det-0002": [], "s-cls-0001": "square"}, actor="alice")
        assert [c.new_label for c in changes] == ["2 objects: circle 1, square 1", "no objects", "square"]
        stored = box_labels(session, ["s-det-0001", "s-det-0002"])
        assert stored["s-det-0001"][1] == {"label": "square", "x1": 0.1, "y1": 0.1, "x2": 0.3, "y2": 0.5}
        assert stored["s-det-0002"] == []
        # A relabel keeps the old boxes in the history; the same boxes again change nothing.
        again = accept_labels(session, {"s-det-0002": [box()], "s-det-0001": stored["s-det-0001"]}, actor="bob")
        assert again[0].relabelled and again[0].old_boxes == [] and again[1].unchanged
        history = label_history(session, "s-det-0002")
        assert [(h.old_boxes, h.new_boxes, h.actor) for h in history] == [
            (None, [], "alice"), ([], [box()], "bob")]
        event = list_events(session, action="samples.labelled")[-1]
        assert event.actor == "bob" and event.details["boxes"]["s-det-0002"] == [box()]


# -- the loop end to end ----------------------------------------------------------------

def _upload_shifted_samples(device: SimDevice, rng: np.random.Generator, count: int,
                            truth: dict[str, list[dict[str, Any]]]) -> None:
    """``count`` frames of small objects: the device's boxes go with each sample, the true ones into ``truth``."""
    from cloud.pipeline.data.synth_detection import DETECTION_CLASSES, render_detection_scene

    assert device.model is not None
    manifest = device.model.manifest
    assert manifest.detection is not None
    started = datetime(2026, 1, 1, tzinfo=UTC)
    for index in range(count):
        frame, objects = render_detection_scene(rng, width=FRAME_W, height=FRAME_H, min_size=9.0, max_size=16.0)
        output = device.model.backend.run(preprocess(frame, manifest.preprocessing))[0]
        found = detect(output, detection=manifest.detection, labels=list(manifest.labels),
                       preprocessing=manifest.preprocessing, source_width=FRAME_W, source_height=FRAME_H)
        ok, encoded = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 95])
        assert ok
        jpeg = encoded.tobytes()
        sample_id = f"{device.device_id}-{index:04d}-{uuid.uuid4().hex[:6]}"
        report = SampleReport(
            device_id=device.device_id, sample_id=sample_id, model_version=manifest.model_version,
            package_id=manifest.package_id, sampler="random", captured_at=started + timedelta(seconds=index),
            upload="http", image_sha256=hashlib.sha256(jpeg).hexdigest(), image_bytes=len(jpeg),
            image_width=FRAME_W, image_height=FRAME_H,
            boxes=[SampleBox(x1=d.x1 / FRAME_W, y1=d.y1 / FRAME_H, x2=d.x2 / FRAME_W, y2=d.y2 / FRAME_H,
                             label=d.label, score=round(d.score, 4)) for d in found[:32]])
        device.publish_sample(jpeg, report)
        # The generator's ground truth, in source pixels: the oracle's labels.
        truth[sample_id] = [{"label": DETECTION_CLASSES[o.class_id], "x1": o.box[0], "y1": o.box[1],
                             "x2": o.box[2], "y2": o.box[3], "units": "pixels"} for o in objects]


def test_shifted_detector_is_relabelled_retrained_and_rolled_out(control_plane: Any, api: Any,
                                                                  tmp_path: Path) -> None:
    from cloud.pipeline.data.synth_detection import write_detection_dataset
    from cloud.pipeline.detection_service import (
        build_detection_model,
        ingest_detection,
        train_detection_model,
    )
    from cloud.pipeline.evaluate.detection_gates import DetectionThresholds
    from cloud.pipeline.service import PipelinePaths, resolve_profiles
    from cloud.pipeline.train.detector import DetectorConfig

    plane = control_plane
    paths = PipelinePaths.under(plane.settings.data_dir)

    # -- a detector, its dataset version and its release, through the pipeline -----------
    root = write_detection_dataset(tmp_path / "scenes", images=240, seed=3)
    dataset = ingest_detection(plane.engine, paths, root).dataset
    thresholds = DetectionThresholds(min_map_50=0.3, min_slice_map_50=0.0)
    trained = train_detection_model(plane.engine, paths, dataset_id=dataset.dataset_id, name="shapes-det",
                                    config=DetectorConfig(epochs=10, width=16), thresholds=thresholds)
    assert trained.status == "validated", trained.decision.reasons
    base = build_detection_model(plane.engine, paths, version=trained.model_version,
                                 profiles=resolve_profiles([PROFILE]))
    assert base.package is not None, base.notes
    base_package = base.package.manifest.package_id

    # -- three cameras run it; two of them now film smaller objects ------------------------
    base_manifest = PackageManifest.from_bytes(
        (plane.settings.packages_dir / base_package / "manifest.json").read_bytes())
    assert base_manifest.drift_reference_file is not None, base.notes
    device_ids = ["det-shift-0", "det-shift-1"]
    shifts = {"det-shift-0": SceneShift(object_scale=0.4), "det-shift-1": SceneShift(object_scale=0.4),
              "det-clean": AS_TRAINED}
    devices = start_fleet(plane, {device_id: DetectionWorld(seed=500 + index, shift=shift)
                                  for index, (device_id, shift) in enumerate(shifts.items())},
                          base_package, window_frames=WINDOW_FRAMES, hardware_profile=PROFILE)
    shifted = [d for d in devices if d.device_id in device_ids]
    try:
        # -- their drift windows reach the real monitor: alerts for exactly the shifted cameras
        run_until_stored(plane, devices, DRIFT_WINDOWS)
        windows = stored_drift_windows(plane)
        assert all(w.tested for w in windows), dump([w.untested_reason for w in windows])
        assert open_alert_devices(plane) == set(device_ids), dump(
            api.get("/api/v1/drift/alerts", params={"state": "open"}).json())
        alerts = api.get("/api/v1/drift/alerts", params={"state": "open"}).json()
        assert all(a["package_id"] == base_package for a in alerts), dump(alerts)

        truth: dict[str, list[dict[str, Any]]] = {}
        rng = np.random.default_rng(77)
        for device in shifted:
            _upload_shifted_samples(device, rng, 60, truth)
            device.flush()
        # The cameras' own samplers uploaded frames too while their windows ran; wait for ours.
        wait_for(lambda: set(truth) <= {s["sample_id"] for s in api.get(
            "/api/v1/samples", params={"device_id": device_ids, "limit": 500}).json()}, 60,
                 what="every sample stored")
        stored = api.get(f"/api/v1/samples/{next(iter(truth))}").json()
        assert stored["image_width"] == FRAME_W and stored["classes"] == CLASSES and stored["task"] == "detection"

        # -- the monitor's alerts opened one proposal for the package, for the shifted cameras
        proposals = api.get("/api/v1/governance/proposals").json()
        assert len(proposals) == 1 and sorted(proposals[0]["device_ids"]) == device_ids, dump(proposals)
        proposal_id = proposals[0]["id"]
        assert proposals[0]["base_dataset_id"] == dataset.dataset_id

        # -- the oracle labels every sample with its true boxes: one from the CLI, all through the API
        first = next(iter(truth))
        bad = api.post("/api/v1/samples/labels", json={"labels": {first: [{**truth[first][0], "x2": 400}]}})
        assert bad.status_code == 422 and "outside the frame (200x150 pixels)" in bad.text, bad.text
        runner = CliRunner()
        operator = {"EDGEFLEET_SERVER": plane.base_url, "COLUMNS": "200",
                    "EDGEFLEET_TOKEN": make_token(plane, Role.OPERATOR, "oracle")}
        zero_area = runner.invoke(app, ["samples", "label", f"{first}={json.dumps([{**truth[first][0], 'y2': 0}])}"],
                                  env=operator)
        assert zero_area.exit_code == Exit.BAD_INPUT and "has no area" in zero_area.stderr, zero_area.output
        broken = runner.invoke(app, ["samples", "label", f"{first}=[{{'label'"], env=operator)
        assert broken.exit_code == Exit.BAD_INPUT and "not valid JSON" in broken.stderr, broken.output
        labelled = runner.invoke(app, ["samples", "label", f"{first}={json.dumps(truth[first])}"], env=operator)
        assert labelled.exit_code == 0 and f"{first}: {len(truth[first])} object" in labelled.stdout, labelled.output
        shown = runner.invoke(app, ["samples", "show", first, "--out", str(tmp_path / "first.jpg")], env=operator)
        assert f"labelled    {len(truth[first])} box(es)" in shown.stdout, shown.output
        answer = api.post("/api/v1/samples/labels", json={"labels": truth, "labeller": "oracle:synthetic"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["labelled"] == len(truth)
        # The CLI's label was the same: unchanged, still the CLI's.
        assert next(c for c in answer.json()["changes"] if c["sample_id"] == first)["unchanged"]
        second = list(truth)[1]
        detail = api.get(f"/api/v1/samples/{second}").json()
        assert detail["status"] == "labelled" and len(detail["label_boxes"]) == len(truth[second])
        assert detail["labelled_by"].endswith("via oracle:synthetic")

        # -- retraining: new dataset version, training, validation, build, rollout proposal -
        response = api.post(f"/api/v1/governance/proposals/{proposal_id}/retrain")
        assert response.status_code == 202, response.text
        job = wait_for_job(api, response.json()["job_id"], timeout_s=600)
        assert job["state"] == "succeeded", dump(job)
        proposal = job["result"]["proposal"]
        numbers = proposal["validation"]
        assert proposal["state"] == "rollout_proposed", dump(proposal)
        assert numbers["task"] == "detection" and numbers["new_model_gate"] == "validated"
        assert numbers["drift_held_out_images"] > 0 and numbers["added_samples"] == len(truth)
        assert numbers["drift_map_50_after"] > numbers["drift_map_50_before"], numbers
        assert numbers["old_test_map_50_after"] >= numbers["old_test_map_50_before"] - 0.02, numbers

        # The new version is the old one plus the labelled samples, with the held-out share out of training.
        with Session(plane.engine) as session:
            lineage = session.get(DatasetLineage, proposal["new_dataset_id"])
            assert lineage is not None and lineage.parent_dataset_id == dataset.dataset_id
            assert sorted(lineage.sample_ids) == sorted(truth)
            new_model = session.exec(select(ModelVersion).where(
                ModelVersion.version == proposal["new_model_version"])).one()
            assert new_model.dataset_id == proposal["new_dataset_id"] and new_model.name == "shapes-det"
            assert new_model.hyperparameters["task"] == "detection"
            assert new_model.hyperparameters["train_images"] == numbers["train_images"]
            assert numbers["train_images"] + numbers["drift_held_out_images"] < len(dataset.samples) + len(truth)
            blobs = set(session.exec(select(SampleBlob.sha256)))
            images = set(session.exec(select(SampleRecord.image_sha256).where(
                col(SampleRecord.sample_id).in_(list(truth)))))
            assert len(images) == len(truth) and images <= blobs
        # Packaged as any trained detector: the detection block, the profile's artifacts.
        manifest = PackageManifest.from_bytes(
            (plane.settings.packages_dir / proposal["new_package_id"] / "manifest.json").read_bytes())
        assert manifest.detection is not None and manifest.model_version == proposal["new_model_version"]
        assert manifest.drift_reference_file is not None
        assert list(manifest.hardware_profiles) == [PROFILE]

        # -- the canary rollout waits for approval; approval starts it; both cameras install
        pending = api.get("/api/v1/governance/rollout-proposals", params={"state": "pending"}).json()
        assert len(pending) == 1 and sorted(pending[0]["device_ids"]) == device_ids, dump(pending)
        approved = api.post(f"/api/v1/governance/rollout-proposals/{pending[0]['id']}/approve").json()
        assert approved["state"] == "started" and approved["rollout_id"], dump(approved)
        installed: dict[str, list[str]] = {d.device_id: [] for d in shifted}

        def all_installed() -> bool:
            for device in shifted:
                installed[device.device_id] += device.handle_commands()
            return all(proposal["new_package_id"] in packages for packages in installed.values())

        wait_for(all_installed, 90, interval_s=0.5, what="the retrained release on both cameras")
        assert all(d.model is not None and d.model.manifest.package_id == proposal["new_package_id"] for d in shifted)
        # -- under the retrained release (its reference drawn from the new dataset version, the
        # shifted samples included) the shifted cameras' windows test clean and their alerts clear
        published = sum(d.published["drift"] for d in devices)
        for device in shifted:
            device.run_windows(CLEAR_WINDOWS)
            device.flush()
        published += CLEAR_WINDOWS * len(shifted)
        assert sum(d.published["drift"] for d in devices) == published
        wait_for(lambda: len(stored_drift_windows(plane)) >= published, 60, what="post-rollout windows stored")
        wait_for(lambda: not open_alert_devices(plane), 30, what="the shifted cameras' alerts to clear")
        cleared = api.get("/api/v1/drift/alerts", params={"state": "cleared"}).json()
        assert sorted(a["device_id"] for a in cleared) == device_ids, dump(cleared)
        new_reference = DriftReference.from_bytes((plane.settings.packages_dir / proposal["new_package_id"]
                                                   / manifest.drift_reference_file).read_bytes())
        assert all(a["cleared_reason"] == f"{new_reference.calibration.clear_windows} clean windows under package "
                   f"{proposal['new_package_id']}" for a in cleared), dump(cleared)
        actions = [e["action"] for e in api.get("/api/v1/governance/audit",
                                                 params={"limit": 200}).json()]
        for action in ("alert.opened", "proposal.opened", "samples.labelled", "retraining.started", "dataset.created",
                       "retraining.validated", "release.built", "rollout.proposed", "rollout.approved",
                       "rollout.started", "alert.cleared"):
            assert action in actions, actions
    finally:
        for device in devices:
            device.close()


def test_a_retrained_detector_is_held_back_for_each_reason() -> None:
    from cloud.governance._detection import retraining_reasons

    good = {"old_test_map_50_before": 0.6, "old_test_map_50_after": 0.59, "drift_map_50_before": 0.1,
            "drift_map_50_after": 0.3, "drift_held_out_images": 20, "new_test_map_50": 0.55}
    assert retraining_reasons(good, gate_status="validated", tolerance=0.02, min_gain=0.0) == []
    cases = [
        ({"old_test_map_50_after": 0.55}, "validated", r"old test set drops from 0.6 to 0.55"),
        ({"drift_map_50_after": 0.1}, "validated", r"held-out drifted samples goes from 0.1 to 0.1"),
        ({"drift_held_out_images": 0}, "validated", r"no labelled sample was held out"),
        ({}, "rejected", r"rejected by its own validation gate"),
    ]
    for change, gate, reason in cases:
        reasons = retraining_reasons({**good, **change}, gate_status=gate, tolerance=0.02, min_gain=0.0)
        assert len(reasons) == 1 and re.search(reason, reasons[0]), reasons
    # The gain must exceed min_gain, not merely be positive.
    assert retraining_reasons(good, gate_status="validated", tolerance=0.02, min_gain=0.25)
