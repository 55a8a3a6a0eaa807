"""Detection drift end to end on real Mosquitto, a real database and a running control plane.

A trained grid detector is packaged with the drift reference the detection build
writes (the detector's own boxes on the dataset's held-out images). Four simulated
cameras run it with the real device code (runtime, decoder, drift windows with box
histograms, samplers, MQTT). On one camera one kind of object becomes dominant, on
another every object shrinks to 40 % of its size; two film scenes as trained. Drift
alerts must open for exactly the two shifted cameras, name a plausible feature, and
reach the API, the CLI and one retraining proposal, like a classifier's alerts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session

from agent.contract import ModelArtifact, PackageManifest, sha256_file
from agent.contract.drift import DriftReference
from tests.drift.simdevice import (
    AS_TRAINED,
    DetectionWorld,
    SceneShift,
    dump,
    run_until_stored,
    start_fleet,
    stored_drift_windows,
)
from tests.support.models import TrainedDetector

pytestmark = pytest.mark.integration

WINDOW_FRAMES = 40
WINDOWS = 5
X86 = "x86-64-avx2"


def _package(plane: Any, detector: TrainedDetector, workdir: Path) -> str:
    """Package the detector as the detection build does, with the reference it writes."""
    from cloud.fleet import crud
    from cloud.fleet.tables import ModelVersion, Package
    from cloud.monitor.reference import run_detections
    from cloud.pipeline.data.detection import scan_detection_dataset
    from cloud.pipeline.detection_service import build_detection_drift_reference
    from cloud.pipeline.package.builder import build_package
    from cloud.pipeline.train.detector import DETECTION_SPEC, detection_block

    dataset = scan_detection_dataset(detector.data_root)
    block = detection_block(DETECTION_SPEC)
    reference, note = build_detection_drift_reference(
        dataset, dataset.labels, DETECTION_SPEC, workdir / "drift_reference.json",
        lambda images: run_detections(detector.onnx_path, images, DETECTION_SPEC, block, dataset.labels),
        window_frames=WINDOW_FRAMES)
    assert reference is not None, note
    with Session(plane.engine) as session:
        model = crud.add_model_version(session, ModelVersion(
            name="shapes-detector", version=crud.next_model_version(session, "shapes-detector"),
            dataset_id=dataset.dataset_id, labels=dataset.labels, hyperparameters={"task": "detection"}, metrics={},
            onnx_path=str(detector.onnx_path), onnx_sha256=sha256_file(detector.onnx_path)))
        assert model.id is not None
        built = build_package(
            packages_dir=plane.settings.packages_dir, model_name=model.name, model_version=model.version,
            labels=dataset.labels, spec=DETECTION_SPEC, hardware_profiles=[X86], detection=block, release=model.id,
            drift_reference=reference,
            artifacts=[(detector.onnx_path, ModelArtifact(file="model.onnx", runtime="onnxruntime", precision="fp32",
                                                          output_name=detector.output_name))])
        crud.add_package(session, Package(
            id=built.manifest.package_id, model_version_id=model.id, model_version=model.version,
            hardware_profiles=[X86], manifest_sha256=built.manifest_sha256, size_bytes=built.size_bytes,
            path=str(built.directory.resolve())))
    return built.manifest.package_id


SHIFTS = {
    "det-clean-0": AS_TRAINED,
    "det-clean-1": AS_TRAINED,
    # Triangles were a third of the objects; now nine in ten.
    "det-triangles": SceneShift(class_weights=(0.5, 0.5, 9.0)),
    "det-small": SceneShift(object_scale=0.4),
}
PLAUSIBLE = {
    "det-triangles": {"object_counts"},
    # Smaller boxes, and the detector is less sure of (and misses some of) small objects.
    "det-small": {"box_size", "box_score", "boxes_per_frame", "object_counts"},
}


def test_shifted_detection_cameras_alert_with_the_feature_that_moved(control_plane, api,
                                                                     trained_detector: TrainedDetector,
                                                                     tmp_path: Path) -> None:
    plane = control_plane
    package_id = _package(plane, trained_detector, tmp_path / "reference")
    manifest = PackageManifest.from_bytes((plane.settings.packages_dir / package_id / "manifest.json").read_bytes())
    assert manifest.drift_reference_file is not None
    reference = DriftReference.from_bytes(
        (plane.settings.packages_dir / package_id / manifest.drift_reference_file).read_bytes())
    assert reference.detection is not None and reference.class_counts == []

    devices = start_fleet(plane, {device_id: DetectionWorld(seed=300 + index, shift=shift)
                                  for index, (device_id, shift) in enumerate(SHIFTS.items())},
                          package_id, window_frames=WINDOW_FRAMES)
    try:
        published = run_until_stored(plane, devices, WINDOWS)

        # Every window was tested, with its detection block kept for the fleet test.
        windows = stored_drift_windows(plane)
        assert all(w.tested and w.detection is not None for w in windows), dump([w.untested_reason for w in windows])

        alerts = api.get("/api/v1/drift/alerts", params={"state": "open"}).json()
        assert {a["device_id"] for a in alerts} == set(PLAUSIBLE), dump(alerts)
        for alert in alerts:
            named = {f["name"] for f in alert["evidence"]["features"] if f["p_holm"] < 0.01}
            assert named & PLAUSIBLE[alert["device_id"]], dump(alert["evidence"])
            assert alert["package_id"] == package_id and alert["evidence"]["window_p"] < 1e-3
        small = next(a for a in alerts if a["device_id"] == "det-small")
        size = next(f for f in small["evidence"]["features"] if f["name"] == "box_size")
        assert size["window_mean"] < size["reference_mean"], dump(size)

        # The same retraining proposal path as a classifier's alerts.
        proposals = api.get("/api/v1/governance/proposals").json()
        assert len(proposals) == 1 and set(proposals[0]["device_ids"]) == set(PLAUSIBLE), dump(proposals)

        # The fleet test adds every camera's windows, detection blocks included. Half the fleet films
        # scenes as trained, so the merged shift is diluted: the box features lead, whether or not
        # the merged window crosses the fleet threshold.
        fleet = api.get(f"/api/v1/drift/fleet/{package_id}").json()
        assert len(fleet["devices"]) == len(devices) and fleet["frames"] == published * WINDOW_FRAMES, dump(fleet)
        assert fleet["features"][0]["name"] in {"object_counts", "box_size", "box_score", "boxes_per_frame"}, \
            dump(fleet)

        # And the operator CLI over the same API.
        from typer.testing import CliRunner

        from cloud.cli import app as cli

        env = {"EDGEFLEET_SERVER": plane.base_url, "EDGEFLEET_TOKEN": api.headers["authorization"].split()[1],
               "COLUMNS": "250"}
        shown = CliRunner().invoke(cli, ["drift", "alerts", "--state", "open", "--json"], env=env)
        assert shown.exit_code == 0, shown.output
        assert {a["device_id"] for a in json.loads(shown.stdout)} == set(PLAUSIBLE)
    finally:
        for device in devices:
            device.close()
