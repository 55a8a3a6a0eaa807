"""Bring-your-own models: ONNX, LiteRT and OpenVINO IR classifiers and detectors imported as packages.

The networks are built here with the exact input/output of the exports users bring
(a YOLOv8/YOLO11 raw export with Ultralytics metadata, an NMS-in-graph export, a
classifier ending in Softmax), imported with as few flags as the model allows, and
then run the way a device runs them: the package's manifest loaded by the agent's
engine. What the device reports must equal what the import's reference check
reported, and a Softmax classifier's confidences must not be squashed by a second
softmax.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from sqlalchemy import Engine
from torch import nn

from agent.capture.latest import FrameSlot
from agent.contract import MANIFEST_FILE, PackageManifest
from agent.infer.engine import InferenceEngine, load_model
from agent.telemetry.window import WindowStats
from cloud.pipeline.byo.importer import ImportDeclaration, reference_images
from cloud.pipeline.byo.layout import AmbiguousModel
from cloud.pipeline.errors import PipelineInputError
from cloud.pipeline.service import PipelinePaths, build_model, import_package, ingest

TFLITE_CLASSIFIER = Path(__file__).parent / "data" / "tiny_softmax_classifier.tflite"
YOLO_SIZE = 160
YOLO_STRIDE = 8


class TinyYoloRaw(nn.Module):
    """YOLOv8/YOLO11 raw head's I/O: ``images`` 1x3xHxW → ``output0`` 1x(4+C)xN, boxes in input pixels."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.head = nn.Conv2d(3, 4 + classes, kernel_size=YOLO_STRIDE, stride=YOLO_STRIDE)
        cells = YOLO_SIZE // YOLO_STRIDE
        ys, xs = torch.meshgrid(torch.arange(cells), torch.arange(cells), indexing="ij")
        self.register_buffer("grid", torch.stack([xs.flatten(), ys.flatten()]).float().unsqueeze(0))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        raw = self.head(images).flatten(2)
        centres = (torch.sigmoid(raw[:, :2]) + self.grid) * YOLO_STRIDE
        sizes = torch.sigmoid(raw[:, 2:4]) * 48 + 4
        return torch.cat([centres, sizes, torch.sigmoid(raw[:, 4:] * 3)], dim=1)


class TinyNmsInGraph(nn.Module):
    """An NMS-in-graph export's output: 1 x N x 6 (x1, y1, x2, y2, score, class), padded with low scores."""

    def __init__(self) -> None:
        super().__init__()
        boxes = torch.tensor([[10, 12, 60, 70], [80, 20, 150, 90], [30, 100, 90, 150]] + [[0, 0, 1, 1]] * 7,
                             dtype=torch.float32)
        self.register_buffer("boxes", boxes)
        self.register_buffer("bias", torch.tensor([2.0, 0.5, -0.3] + [-9.0] * 7))
        self.register_buffer("classes", torch.tensor([0.0, 2.0, 1.0] + [0.0] * 7))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        level = images.mean(dim=(1, 2, 3)).reshape(1, 1)
        scores = torch.sigmoid(self.bias + level * 2)
        rows = torch.cat([self.boxes + level, scores.reshape(-1, 1), self.classes.reshape(-1, 1)], dim=1)
        return rows.unsqueeze(0)


class TinySoftmaxClassifier(nn.Module):
    def __init__(self, classes: int) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.head = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.head(torch.relu(self.conv(x)).mean(dim=(2, 3))) * 4, dim=1)


def _export(module: nn.Module, path: Path, shape: tuple[int, ...], input_name: str, output_name: str,
            metadata: dict[str, str] | None = None, dynamic_hw: bool = False) -> Path:
    torch.onnx.export(module.eval(), (torch.zeros(shape),), str(path), dynamo=False, opset_version=17,
                      input_names=[input_name], output_names=[output_name])
    model = onnx.load(str(path))
    if dynamic_hw:  # what `yolo export dynamic=True` writes: symbolic height and width
        dims = model.graph.input[0].type.tensor_type.shape.dim
        for axis, name in ((2, "height"), (3, "width")):
            dims[axis].ClearField("dim_value")
            dims[axis].dim_param = name
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return path


def _yolo_export(path: Path, *, metadata: bool = True) -> Path:
    props = {"task": "detect", "names": "{0: 'person', 1: 'car'}", "imgsz": f"[{YOLO_SIZE}, {YOLO_SIZE}]",
             "stride": "32", "author": "Ultralytics"} if metadata else None
    return _export(TinyYoloRaw(2), path, (1, 3, YOLO_SIZE, YOLO_SIZE), "images", "output0", props, dynamic_hw=True)


def _paths(tmp_path: Path) -> PipelinePaths:
    return PipelinePaths.under(tmp_path / "cloud")


def _device(package_dir: Path):  # type: ignore[no-untyped-def]
    """The package as a device loads it: manifest parsed from bytes, model loaded by the agent, an engine to run it."""
    manifest = PackageManifest.from_bytes((package_dir / MANIFEST_FILE).read_bytes())
    loaded = load_model(manifest, package_dir, threads=1)
    return manifest, loaded, InferenceEngine(FrameSlot(), WindowStats())


def _device_detections(package_dir: Path) -> list[dict[str, object]]:
    _, loaded, engine = _device(package_dir)
    return [{"detections": [{"box": [d.x1, d.y1, d.x2, d.y2], "label": d.label, "score": d.score}
                            for d in engine.detect_frame(loaded, image)]} for image in reference_images()]


def test_yolo_raw_export_imports_from_its_metadata_alone_and_the_device_finds_the_same_boxes(
        tmp_path: Path, engine: Engine) -> None:
    result = import_package(engine, _paths(tmp_path), model_path=_yolo_export(tmp_path / "yolo11n.onnx"),
                            name="yolo")
    payload = result.as_dict()
    assert (payload["task"], payload["decoder"], payload["activation"]) == ("detection", "yolo_raw", "probabilities")
    assert payload["labels"] == ["person", "car"] and payload["input_size"] == [YOLO_SIZE, YOLO_SIZE]
    assert any("dynamic height/width were fixed" in note for note in payload["notes"])
    assert "no drift reference: no detection dataset was given" in payload["drift_reference"]
    package_dir = result.package.directory
    manifest = PackageManifest.from_bytes((package_dir / MANIFEST_FILE).read_bytes())
    assert manifest.task == "detection" and manifest.detection is not None
    assert manifest.detection.scores == "probabilities"
    assert (manifest.preprocessing.resize, manifest.preprocessing.pad_value) == ("letterbox", 114)
    staged = onnx.load(str(package_dir / manifest.artifacts[0].file))
    assert [d.dim_value for d in staged.graph.input[0].type.tensor_type.shape.dim] == [1, 3, YOLO_SIZE, YOLO_SIZE]
    check = payload["reference_check"]
    assert sum(len(image["detections"]) for image in check) > 0
    assert _device_detections(package_dir) == check
    # The classifier build pipeline is not for it: refused with the reason, not a converter error.
    with pytest.raises(PipelineInputError, match="made at import"):
        build_model(engine, _paths(tmp_path), version=result.outcome.model_version, profiles=["x86-64-avx2"],
                    allow_unvalidated=True)


def test_nms_in_graph_export_needs_labels_then_imports_and_matches_on_the_device(tmp_path: Path,
                                                                                 engine: Engine) -> None:
    model = _export(TinyNmsInGraph(), tmp_path / "nms.onnx", (1, 3, 96, 128), "images", "output0")
    with pytest.raises(AmbiguousModel, match="--labels"):
        import_package(engine, _paths(tmp_path), model_path=model, name="nms")
    result = import_package(engine, _paths(tmp_path), model_path=model, name="nms",
                            declared=ImportDeclaration(labels=["cat", "dog", "bird"], score_threshold=0.3))
    payload = result.as_dict()
    assert (payload["decoder"], payload["input_size"]) == ("nms_in_graph", [128, 96])
    manifest = PackageManifest.from_bytes((result.package.directory / MANIFEST_FILE).read_bytes())
    assert manifest.detection is not None and manifest.detection.score_threshold == 0.3
    check = payload["reference_check"]
    # The three real rows at most (the padding rows score below any threshold), their class ids named.
    assert {"cat", "bird"} <= {d["label"] for image in check for d in image["detections"]}
    assert all(len(image["detections"]) <= 3 for image in check)
    assert _device_detections(result.package.directory) == check


def test_softmax_classifier_is_not_softmaxed_twice_in_onnx_openvino_and_litert(tmp_path: Path,
                                                                                engine: Engine) -> None:
    import openvino as ov

    onnx_path = _export(TinySoftmaxClassifier(3), tmp_path / "clf.onnx", (1, 3, 32, 32), "input", "probs")
    # The IR comes from an export with a dynamic height/width: the import reshapes it to --input-size.
    dynamic = _export(TinySoftmaxClassifier(3), tmp_path / "dyn.onnx", (1, 3, 32, 32), "input", "probs",
                      dynamic_hw=True)
    ir_path = tmp_path / "ir" / "clf.xml"
    ov.save_model(ov.convert_model(str(dynamic)), str(ir_path), compress_to_fp16=False)
    labels = ImportDeclaration(labels=["a", "b", "c"])
    for source, runtime in ((onnx_path, "onnxruntime"), (ir_path, "openvino"), (TFLITE_CLASSIFIER, "litert")):
        declared = labels if runtime != "openvino" else ImportDeclaration(labels=["a", "b", "c"], input_size=(32, 32))
        result = import_package(engine, _paths(tmp_path), model_path=source, name=f"clf-{runtime}",
                                declared=declared)
        payload = result.as_dict()
        assert (payload["format"], payload["task"], payload["activation"]) == (runtime, "classification",
                                                                               "probabilities"), payload
        manifest, loaded, device = _device(result.package.directory)
        assert manifest.artifacts[0].runtime == runtime and manifest.artifacts[0].output_activation == "none"
        assert "no dataset was given" in payload["drift_reference"]
        assert (runtime == "openvino") == any("OpenVINO input's dynamic height/width" in n for n in payload["notes"])
        for image, checked in zip(reference_images(), payload["reference_check"], strict=True):
            raw = loaded.backend.run(_pre(image, manifest))
            label, confidence = device.infer_frame(loaded, image)
            # The device's confidence is the model's own probability, not softmax(probabilities).
            assert confidence == pytest.approx(float(raw.max()), abs=1e-5)
            assert (label, round(confidence, 5)) == (checked["label"], checked["confidence"])


def _pre(image: np.ndarray, manifest: PackageManifest) -> np.ndarray:
    from agent.preprocess import preprocess

    return preprocess(image, manifest.preprocessing)


def test_a_dataset_gives_the_classifier_a_gate_and_a_drift_reference(tmp_path: Path, engine: Engine) -> None:
    from cloud.pipeline.data.synth import write_synthetic_dataset

    paths = _paths(tmp_path)
    dataset = ingest(engine, paths, write_synthetic_dataset(tmp_path / "data", images_per_class=50, seed=5)).dataset
    model = _export(TinySoftmaxClassifier(len(dataset.labels)), tmp_path / "clf.onnx", (1, 3, 32, 32),
                    "input", "probs")
    result = import_package(engine, paths, model_path=model, name="clf", dataset_id=dataset.dataset_id,
                            declared=ImportDeclaration(labels=list(dataset.labels)))
    payload = result.as_dict()
    assert payload["accuracy"] is not None and payload["status"] in ("validated", "rejected")
    assert result.package.manifest.drift_reference_file is not None, payload["drift_reference"]
    assert payload["drift_reference"].startswith("drift reference from")


def test_a_detection_dataset_gives_an_imported_detector_a_drift_reference(tmp_path: Path, engine: Engine) -> None:
    from agent.contract.drift import DriftReference
    from cloud.pipeline.data.synth_detection import write_detection_dataset

    paths = _paths(tmp_path)
    dataset = ingest(engine, paths, write_detection_dataset(tmp_path / "scenes", images=260, seed=4)).dataset
    result = import_package(engine, paths, model_path=_yolo_export(tmp_path / "yolo11n.onnx"), name="yolo",
                            dataset_id=dataset.dataset_id)
    payload = result.as_dict()
    manifest = result.package.manifest
    assert manifest.drift_reference_file is not None, payload["drift_reference"]
    assert payload["drift_reference"].startswith("drift reference from the detector's")
    reference = DriftReference.from_bytes((result.package.directory / manifest.drift_reference_file).read_bytes())
    # Objects per class follow the detector's labels, whatever the dataset calls its objects.
    assert reference.detection is not None and reference.labels == ["person", "car"]
    assert len(reference.detection.object_counts) == 2
    with pytest.raises(PipelineInputError, match="detection set and the model is a classifier"):
        import_package(engine, paths, model_path=_export(TinySoftmaxClassifier(3), tmp_path / "clf.onnx",
                                                         (1, 3, 32, 32), "input", "probs"),
                       name="clf", dataset_id=dataset.dataset_id,
                       declared=ImportDeclaration(labels=["circle", "square", "triangle"]))


def test_ambiguous_and_contradicting_models_name_the_flag_to_pass(tmp_path: Path, engine: Engine,
                                                                  database_url: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    paths = _paths(tmp_path)
    unknown = _export(nn.Sequential(nn.Conv2d(3, 20, 4, stride=4), nn.Flatten(2)), tmp_path / "odd.onnx",
                      (1, 3, 20, 24), "input", "out")  # 1 x 20 x 30: no decoder fits
    with pytest.raises(AmbiguousModel, match="--decoder yolo_raw"):
        import_package(engine, paths, model_path=unknown, name="odd")
    bare_yolo = _yolo_export(tmp_path / "bare.onnx", metadata=False)
    with pytest.raises(AmbiguousModel, match="--input-size"):
        import_package(engine, paths, model_path=bare_yolo, name="bare")
    with pytest.raises(AmbiguousModel, match="--labels"):
        import_package(engine, paths, model_path=bare_yolo, name="bare",
                       declared=ImportDeclaration(input_size=(YOLO_SIZE, YOLO_SIZE)))
    softmax_clf = _export(TinySoftmaxClassifier(3), tmp_path / "clf.onnx", (1, 3, 32, 32), "input", "probs")
    with pytest.raises(PipelineInputError, match="--activation probabilities"):
        import_package(engine, paths, model_path=softmax_clf, name="clf",
                       declared=ImportDeclaration(labels=["a", "b", "c"], activation="logits"))
    with pytest.raises(PipelineInputError, match="--task classification"):
        import_package(engine, paths, model_path=softmax_clf, name="clf",
                       declared=ImportDeclaration(labels=["a", "b", "c"], task="detection"))
    (tmp_path / "model.pt").write_bytes(b"not a model")
    with pytest.raises(PipelineInputError, match=r"\.tflite"):
        import_package(engine, paths, model_path=tmp_path / "model.pt", name="pt")
    assert not (paths.models_dir / "odd").exists() or not any((paths.models_dir / "odd").iterdir())

    # The CLI on the same data directory and database: exit 2 naming the flag, then the flags that settle it.
    from typer.testing import CliRunner

    from cloud.cli import app

    monkeypatch.setenv("EDGEFLEET_DATA_DIR", str(tmp_path / "cloud"))
    monkeypatch.setenv("EDGEFLEET_DATABASE_URL", database_url)
    labels = tmp_path / "labels.txt"
    labels.write_text("person\ncar\n")
    runner = CliRunner()
    refused = runner.invoke(app, ["model", "import", str(bare_yolo), "--name", "bare", "--labels", str(labels)])
    assert refused.exit_code == 2 and "--input-size" in refused.output
    done = runner.invoke(app, ["model", "import", str(bare_yolo), "--name", "bare", "--labels", str(labels),
                               "--input-size", str(YOLO_SIZE), "--decoder", "yolo_raw", "--json"])
    assert done.exit_code == 0, done.output
    payload = json.loads(done.stdout)
    assert payload["decoder"] == "yolo_raw" and payload["package_id"]


def test_api_imports_a_yolo_export_and_answers_400_naming_the_flag(control_plane, api, tmp_path: Path) -> None:
    yolo = _yolo_export(tmp_path / "yolo.onnx")
    imported = api.post("/api/v1/models/import", data={"name": "yolo-api"},
                        files={"model": ("yolo11n.onnx", yolo.read_bytes(), "application/octet-stream")}, timeout=120)
    assert imported.status_code == 201, imported.text
    body = imported.json()
    assert (body["decoder"], body["labels"]) == ("yolo_raw", ["person", "car"])
    assert api.get(f"/api/v1/packages/{body['package_id']}").status_code == 200
    bare = _yolo_export(tmp_path / "bare.onnx", metadata=False)
    ambiguous = api.post("/api/v1/models/import", data={"name": "bare", "input_size": str(YOLO_SIZE)},
                         files={"model": ("bare.onnx", bare.read_bytes(), "application/octet-stream")})
    assert ambiguous.status_code == 400 and "--labels" in ambiguous.json()["detail"]
    ir_without_bin = api.post("/api/v1/models/import", data={"name": "ir"},
                              files={"model": ("m.xml", b"<net/>", "application/xml")})
    assert ir_without_bin.status_code == 400 and "weights" in ir_without_bin.json()["detail"]
