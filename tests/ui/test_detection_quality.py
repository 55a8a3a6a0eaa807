"""Operators see a detector's quality: mAP@0.5 and mAP@0.5:0.95 overall, per class and per slice
against the gate's thresholds, and each build artifact's mAP and INT8 drop, on the model page,
in the API's model detail and in ``edgefleet model show``. Classifiers keep their own view."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlmodel import Session
from typer.testing import CliRunner

from cloud.cli import app
from cloud.dashboard.auth import DashboardUser
from cloud.dashboard.routes import _scalar_metrics, _slices, templates
from cloud.fleet import crud
from cloud.fleet.tables import ModelVersion
from cloud.pipeline.evaluate.detection_gates import (
    DetectionEvaluation,
    DetectionThresholds,
    SliceResult,
    detection_validation_gate,
)
from cloud.pipeline.evaluate.detection_metrics import DetectionMetrics
from cloud.pipeline.registry import store
from cloud.pipeline.registry.detection_quality import detection_quality
from cloud.pipeline.registry.tables import ModelBuild, ModelLineage
from cloud.security.tables import Role
from cloud.security.tokens import Principal

USER = DashboardUser("ops", Role.OPERATOR, Principal(Role.OPERATOR, "ops"), csrf="c" * 32)
LABELS = ["person", "car"]
THRESHOLDS = DetectionThresholds()  # mAP@0.5 >= 0.5 overall, >= 0.4 on slices of >= 20 images


def _evaluation() -> DetectionEvaluation:
    return DetectionEvaluation(
        images=60, labels=LABELS, metrics=DetectionMetrics(0.72, 0.41, {0: 0.8, 1: 0.64}, {0: 0.45, 1: 0.37}),
        slices={"light=day": SliceResult(30, DetectionMetrics(0.75, 0.44, {0: 0.8, 1: 0.7}, {0: 0.5, 1: 0.38})),
                "light=night": SliceResult(25, DetectionMetrics(0.31, 0.12, {0: 0.4, 1: 0.22}, {0: 0.2, 1: 0.04})),
                "weather=fog": SliceResult(5, DetectionMetrics(0.2, 0.1, {0: 0.2}, {0: 0.1}))})


def _artifact(file: str, runtime: str, precision: str, map_50: float, accepted: bool) -> dict[str, Any]:
    # The keys a detector's build summary records (PackagedArtifact.summary with DetectionArtifact.quality).
    return {"file": file, "runtime": runtime, "precision": precision, "profiles": ["x86-64-avx2"],
            "sha256": "0" * 64, "size_bytes": 1000, "map_50": map_50, "map_50_95": map_50 - 0.3, "slices": {},
            "gate": {"status": "accepted" if accepted else "rejected", "notes": [],
                     "reasons": [] if accepted else ["mAP@0.5 drops 1.50 pp (> 1.00)"]},
            "accepted": accepted}


def _register_detector(session: Session, version: str) -> None:
    """The rows train_detection_model and a build write, with a real evaluation and gate decision."""
    evaluation = _evaluation()
    decision = detection_validation_gate(evaluation, THRESHOLDS)
    metrics = evaluation.as_dict()
    model = crud.add_model_version(session, ModelVersion(
        name="det", version=version, dataset_id="ds-det", labels=LABELS, metrics=metrics,
        hyperparameters={"task": "detection", "epochs": 1}, onnx_path="/nonexistent/model.onnx", onnx_sha256="1" * 64))
    assert model.id is not None
    store.save_lineage(session, ModelLineage(model_version_id=model.id, source="trained", evaluation=metrics,
                                             gate={**decision.as_dict(), "thresholds": asdict(THRESHOLDS)}))
    store.set_status(session, model, decision.status)
    store.add_build(session, ModelBuild(id=f"build-{version}", model_version_id=model.id, profiles=["x86-64-avx2"],
                                        artifacts=[_artifact("model.onnx", "onnxruntime", "fp32", 0.72, True),
                                                   _artifact("model.int8.onnx", "onnxruntime", "int8", 0.705, False),
                                                   _artifact("model.int8.xml", "openvino", "int8", 0.71, True)]))


def _check_quality(quality: dict[str, Any]) -> None:
    assert quality["map_50"] == 0.72 and quality["map_50_95"] == 0.41 and quality["passed"] is True
    assert quality["gate_status"] == "rejected" and "light=night" in quality["gate_reasons"][0]
    assert quality["per_class"] == [{"label": "car", "ap_50": 0.64, "ap_50_95": 0.37},
                                    {"label": "person", "ap_50": 0.8, "ap_50_95": 0.45}]
    verdicts = {s["slice"]: (s["map_50"], s["gated"], s["passed"]) for s in quality["per_slice"]}
    assert verdicts == {"light=day": (0.75, True, True), "light=night": (0.31, True, False),
                        "weather=fog": (0.2, False, None)}
    drops = {(a["runtime"], a["precision"]): a["map_50_drop_pp"] for a in quality["artifacts"]}
    # INT8 against the same runtime's FP32 artifact; OpenVINO has none in the build, so the model's test mAP.
    assert drops == {("onnxruntime", "fp32"): None, ("onnxruntime", "int8"): 1.5, ("openvino", "int8"): 1.0}


def _render(model: dict[str, Any]) -> str:
    metrics = model.get("metrics") or {}
    return templates.get_template("model.html").render(
        user=USER, nav="models", now=datetime.now(UTC), live_template=None, model=model,
        scalar_metrics=_scalar_metrics(metrics), slices=_slices(metrics),
        slice_columns=sorted({k for s in _slices(metrics).values() for k in s if isinstance(s.get(k), int | float)}),
        lineage=None, packages=[], devices=[])


def _described(evaluation: dict[str, Any], gate: dict[str, Any], hyperparameters: dict[str, Any],
               builds: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": 1, "version": "m-1", "name": "m", "status": gate.get("status", "validated"), "dataset_id": "ds",
            "code_version": None, "labels": LABELS, "hyperparameters": hyperparameters, "metrics": evaluation,
            "onnx_sha256": "1" * 64, "created_at": "2026-01-01T00:00:00+00:00", "source": "trained",
            "environment": {}, "evaluation": evaluation, "gate": gate, "compared_with": None, "builds": builds,
            "detection_quality": detection_quality(hyperparameters=hyperparameters, evaluation=evaluation,
                                                   gate=gate, builds=builds)}


def test_the_model_page_shows_a_detectors_map_per_class_per_slice_and_per_artifact() -> None:
    evaluation = _evaluation()
    decision = detection_validation_gate(evaluation, THRESHOLDS)
    builds = [{"id": "b-1", "profiles": ["x86-64-avx2"], "package_id": None, "notes": [], "created_at": "",
               "artifacts": [_artifact("model.onnx", "onnxruntime", "fp32", 0.72, True),
                             _artifact("model.int8.onnx", "onnxruntime", "int8", 0.705, False)]}]
    model = _described(evaluation.as_dict(), {**decision.as_dict(), "thresholds": asdict(THRESHOLDS)},
                       {"task": "detection"}, builds)
    _check_quality({**model["detection_quality"], "artifacts": model["detection_quality"]["artifacts"]
                    + [{"runtime": "openvino", "precision": "int8", "map_50_drop_pp": 1.0}]})
    html = _render(model)
    assert 'id="detection-classes-table"' in html and "Per-slice results" not in html
    assert '<th scope="row">car</th><td class="num">0.640</td><td class="num">0.370</td>' in html
    assert ('<th scope="row">light=night</th><td class="num">25</td><td class="num">0.310</td>\n'
            '      <td class="num">0.120</td><td class="num">0.400</td><td><span class="badge badge-fail">fail</span>') in html
    assert '<th scope="row">weather=fog</th>' in html and "badge-not-gated" in html
    assert "0.720 (gate ≥ 0.500) <span class=\"badge badge-pass\">pass</span>" in html
    assert '<td class="num">0.705</td><td class="num">0.405</td><td class="num">1.50</td>' in html
    assert "mAP@0.5 drops 1.50 pp" in html

    # A classifier's page is unchanged: no detection section, its own per-slice accuracy table.
    classifier = {"accuracy": 0.9, "per_slice": {"light=day": {"accuracy": 0.93, "samples": 40}}}
    page = _render(_described(classifier, {"status": "validated", "reasons": [], "notes": []},
                              {"epochs": 3}, []))
    assert "Detection quality" not in page and 'id="slices-table"' in page and "0.930" in page


def test_api_and_cli_show_a_registered_detectors_quality(control_plane, api, database_url: str,
                                                        tmp_path: Path) -> None:
    with Session(control_plane.engine) as session:
        _register_detector(session, "det-1")
    detail = api.get("/api/v1/models/det-1")
    assert detail.status_code == 200, detail.text
    _check_quality(detail.json()["detection_quality"])
    assert detail.json()["evaluation"]["slices"]["light=night"]["map_50"] == 0.31

    env = {"EDGEFLEET_DATABASE_URL": database_url, "EDGEFLEET_DATA_DIR": str(tmp_path / "cli"), "COLUMNS": "200"}
    runner = CliRunner()
    as_json = runner.invoke(app, ["model", "show", "det-1", "--json"], env=env)
    assert as_json.exit_code == 0, as_json.output
    _check_quality(json.loads(as_json.output)["detection_quality"])
    shown = runner.invoke(app, ["model", "show", "det-1"], env=env)
    assert shown.exit_code == 0, shown.output
    assert "detection: mAP@0.5 0.720 (gate ≥ 0.500: pass), mAP@0.5:0.95 0.410, gate rejected" in shown.output
    lines = shown.output.splitlines()
    assert any("light=night" in line and "0.310" in line and "fail" in line for line in lines)
    assert any("weather=fog" in line and "not gated" in line for line in lines)
    assert any("model.int8.onnx" in line and "1.50" in line for line in lines)


def test_training_a_detector_records_what_the_quality_view_needs(database_url: str, tmp_path: Path) -> None:
    """The real path (tiny, one epoch): the gate's thresholds land in the lineage, so slices get a verdict."""
    from cloud.core.db import make_engine, migrate
    from cloud.pipeline.data.synth_detection import write_detection_dataset
    from cloud.pipeline.detection_service import ingest_detection, train_detection_model
    from cloud.pipeline.service import PipelinePaths, describe_model
    from cloud.pipeline.train.detector import DetectorConfig

    migrate(database_url)
    engine = make_engine(database_url)
    paths = PipelinePaths.under(tmp_path / "data")
    dataset = ingest_detection(engine, paths, write_detection_dataset(tmp_path / "scenes", images=60, seed=5)).dataset
    thresholds = DetectionThresholds(min_map_50=0.3, min_slice_map_50=0.2, min_slice_images=3)
    outcome = train_detection_model(engine, paths, dataset_id=dataset.dataset_id, name="det",
                                    config=DetectorConfig(epochs=1, width=8), thresholds=thresholds)
    with Session(engine) as session:
        described = describe_model(session, outcome.model_version)
    quality = described["detection_quality"]
    assert described["gate"]["thresholds"] == asdict(thresholds)
    assert quality["gate_status"] == outcome.status and quality["map_50"] == described["evaluation"]["map_50"]
    assert [c["label"] for c in quality["per_class"]] == sorted(dataset.labels)
    assert quality["per_slice"] and all(s["min_map_50"] == 0.2 for s in quality["per_slice"])
    assert {s["gated"] for s in quality["per_slice"]} == {True, False}  # both kinds of slice are judged here
    for s in quality["per_slice"]:
        assert s["gated"] == (s["images"] >= 3)
        assert s["passed"] == ((s["map_50"] >= 0.2) if s["gated"] else None)
    engine.dispose()
