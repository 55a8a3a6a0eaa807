"""Detection on the device: decoders, NMS, letterbox inverse, and a real ONNX model through the agent."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.capture.latest import FrameItem, FrameSlot
from agent.contract import DetectionSpec, ModelArtifact, PackageFile, PackageManifest, PreprocessSpec
from agent.infer.detect import box_iou, detect, input_to_source, nms, source_to_input
from agent.infer.engine import FrameResult, InferenceEngine, load_model
from agent.telemetry.window import WindowStats
from tests.support.detection_models import constant_output_onnx

LABELS = ["person", "car", "dog"]
# A 640x360 camera frame into a 320x320 letterboxed input: scale 0.5, 70 rows of padding above and below.
SOURCE_W, SOURCE_H = 640, 360
SPEC = PreprocessSpec(width=320, height=320, resize="letterbox", pad_value=114, interpolation="linear")
# Boxes in source pixels (x1, y1, x2, y2), class, score.
TRUTH = [([100.0, 50.0, 220.0, 300.0], 0, 0.91), ([400.0, 200.0, 600.0, 350.0], 1, 0.74),
         ([10.0, 10.0, 60.0, 40.0], 2, 0.55)]


def _detection(decoder: str, **overrides: object) -> DetectionSpec:
    return DetectionSpec.model_validate({"decoder": decoder, "input_width": 320, "input_height": 320,
                                         "score_threshold": 0.25, "iou_threshold": 0.45, **overrides})


def _yolo_raw_output(n_anchors: int = 50) -> np.ndarray:
    """A 1 x (4+C) x N output: the three true boxes, a weaker overlapping duplicate of the first,
    and background anchors scoring below threshold."""
    output = np.zeros((1, 4 + len(LABELS), n_anchors), dtype=np.float32)
    output[0, :4] = 10.0
    output[0, 4:] = 0.01
    boxes = source_to_input(np.asarray([b for b, _, _ in TRUTH]), SPEC, SOURCE_W, SOURCE_H)
    for anchor, ((x1, y1, x2, y2), (_, cls, score)) in enumerate(zip(boxes.tolist(), TRUTH, strict=True)):
        output[0, :4, anchor * 7] = [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]
        output[0, 4 + cls, anchor * 7] = score
    x1, y1, x2, y2 = boxes[0].tolist()
    output[0, :4, 3] = [(x1 + x2) / 2 + 2, (y1 + y2) / 2 + 1, x2 - x1, y2 - y1]  # same object, IoU ~ 0.95
    output[0, 4, 3] = 0.6
    return output


def test_yolo_raw_round_trip_through_a_non_square_letterbox() -> None:
    found = detect(_yolo_raw_output(), detection=_detection("yolo_raw"), labels=LABELS, preprocessing=SPEC,
                   source_width=SOURCE_W, source_height=SOURCE_H)

    assert [(d.label, d.score) for d in found] == [("person", 0.91), ("car", 0.74), ("dog", 0.55)]
    for detection, (box, cls, _) in zip(found, TRUTH, strict=True):
        assert detection.class_id == cls
        assert [detection.x1, detection.y1, detection.x2, detection.y2] == pytest.approx(box, abs=0.02)


def test_yolo_raw_logits_give_the_boxes_classes_and_scores_of_their_probabilities() -> None:
    probabilities = _yolo_raw_output()
    logits = probabilities.copy()
    logits[0, 4:] = np.log(probabilities[0, 4:] / (1 - probabilities[0, 4:]))
    common = {"labels": LABELS, "preprocessing": SPEC, "source_width": SOURCE_W, "source_height": SOURCE_H}

    from_probabilities = detect(probabilities, detection=_detection("yolo_raw"), **common)
    from_logits = detect(logits, detection=_detection("yolo_raw", scores="logits"), **common)

    assert [(d.label, d.class_id) for d in from_logits] == [(d.label, d.class_id) for d in from_probabilities]
    assert [d.score for d in from_logits] == pytest.approx([d.score for d in from_probabilities], abs=1e-5)
    assert [(d.x1, d.y1, d.x2, d.y2) for d in from_logits] == [(d.x1, d.y1, d.x2, d.y2) for d in from_probabilities]


def test_nms_in_graph_round_trip_and_padding_rows() -> None:
    boxes = source_to_input(np.asarray([b for b, _, _ in TRUTH]), SPEC, SOURCE_W, SOURCE_H)
    rows = [[*box, score, cls] for box, (_, cls, score) in zip(boxes.tolist(), TRUTH, strict=True)]
    rows.reverse()  # the graph's order need not be by score
    output = np.asarray([rows + [[0, 0, 0, 0, 0.0, 0]] * 5], dtype=np.float32)  # 1 x 8 x 6, 5 padding rows

    found = detect(output, detection=_detection("nms_in_graph"), labels=LABELS, preprocessing=SPEC,
                   source_width=SOURCE_W, source_height=SOURCE_H)

    assert [d.label for d in found] == ["person", "car", "dog"]
    for detection, (box, _, score) in zip(found, TRUTH, strict=True):
        assert detection.score == pytest.approx(score)
        assert [detection.x1, detection.y1, detection.x2, detection.y2] == pytest.approx(box, abs=0.02)


def test_yolov5_multiplies_objectness_by_the_class_score() -> None:
    boxes = source_to_input(np.asarray([TRUTH[1][0]]), SPEC, SOURCE_W, SOURCE_H)
    x1, y1, x2, y2 = boxes[0].tolist()
    output = np.zeros((1, 2, 5 + len(LABELS)), dtype=np.float32)
    output[0, 0] = [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, 0.8, 0.1, 0.9, 0.0]
    output[0, 1] = [50, 50, 10, 10, 0.2, 0.9, 0.0, 0.0]  # 0.2 x 0.9 = 0.18: below threshold

    found = detect(output, detection=_detection("yolov5"), labels=LABELS, preprocessing=SPEC,
                   source_width=SOURCE_W, source_height=SOURCE_H)

    assert [(d.label, d.score) for d in found] == [("car", pytest.approx(0.72))]
    assert [found[0].x1, found[0].y1, found[0].x2, found[0].y2] == pytest.approx(TRUTH[1][0], abs=0.02)


def test_boxes_are_clipped_to_the_source_frame_and_a_wrong_layout_is_named() -> None:
    # A box reaching into the letterbox padding maps outside the frame: clipped to it.
    clipped = input_to_source(np.asarray([[-10.0, 60.0, 400.0, 300.0]]), SPEC, SOURCE_W, SOURCE_H)
    assert clipped.tolist() == [[0.0, 0.0, 640.0, 360.0]]
    transposed = _yolo_raw_output().transpose(0, 2, 1)
    with pytest.raises(ValueError, match="transposed"):
        detect(transposed, detection=_detection("yolo_raw"), labels=LABELS, preprocessing=SPEC,
               source_width=SOURCE_W, source_height=SOURCE_H)


def _brute_force_nms(xyxy: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float, limit: int) -> list[int]:
    """Textbook greedy NMS, one class at a time, pairwise IoU in plain Python."""
    def pair_iou(a: list[float], b: list[float]) -> float:
        w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
        return w * h / union if union > 0 else 0.0

    kept: list[int] = []
    for index in sorted(range(len(scores)), key=lambda i: (-scores[i], i)):
        if all(classes[k] != classes[index] or pair_iou(xyxy[k].tolist(), xyxy[index].tolist()) <= iou
               for k in kept):
            kept.append(index)
    return kept[:limit]


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), count=st.integers(0, 40), iou=st.floats(0.1, 0.9),
       limit=st.integers(1, 50))
def test_nms_matches_a_brute_force_reference(seed: int, count: int, iou: float, limit: int) -> None:
    rng = np.random.default_rng(seed)
    corner = rng.uniform(0, 100, size=(count, 2))
    xyxy = np.concatenate([corner, corner + rng.uniform(1, 60, size=(count, 2))], axis=1).astype(np.float32)
    scores = rng.choice(np.linspace(0.05, 1, 12), size=count).astype(np.float32)  # ties on purpose
    classes = rng.integers(0, 3, size=count).astype(np.int64)

    kept = nms(xyxy, scores, classes, iou_threshold=iou, max_detections=limit)

    assert kept.tolist() == _brute_force_nms(xyxy, scores, classes, iou, limit)


def test_box_iou_of_identical_and_disjoint_boxes() -> None:
    box = np.asarray([0, 0, 10, 10], dtype=np.float32)
    assert box_iou(box, np.asarray([[0, 0, 10, 10], [20, 20, 30, 30], [5, 0, 15, 10]], dtype=np.float32)).tolist() \
        == pytest.approx([1.0, 0.0, 50 / 150])


# --- a real ONNX model through the agent's ONNX Runtime backend --------------------------------
def _detector_onnx(path: Path, raw: np.ndarray) -> Path:
    """A model with input ``images`` 1x3x320x320 whose output is exactly ``raw`` (1 x (4+C) x N)."""
    return constant_output_onnx(path, raw, input_name="images", input_size=320)


def _manifest(path: Path, **fields: object) -> PackageManifest:
    artifact = ModelArtifact(file=path.name, runtime="onnxruntime", precision="fp32", input_name="images",
                             output_name="output0")
    return PackageManifest.model_validate({
        "package_id": "det-1", "model_name": "det", "model_version": "det-1", "created_at": datetime.now(UTC),
        "hardware_profiles": ["x86-cpu"], "labels": LABELS, "preprocessing": SPEC, "artifacts": [artifact],
        "files": [PackageFile(name=path.name, sha256="0" * 64, size_bytes=path.stat().st_size)], **fields})


def test_onnx_detection_model_runs_through_the_agent_backend_and_decoder(tmp_path: Path) -> None:
    model_path = _detector_onnx(tmp_path / "det.onnx", _yolo_raw_output(8400))
    manifest = _manifest(model_path, task="detection", detection=_detection("yolo_raw"))
    model = load_model(manifest, tmp_path)
    stats = WindowStats()
    emitted: list[FrameResult] = []

    class Collect:
        def emit(self, result: FrameResult) -> None:
            emitted.append(result)

    slot: FrameSlot[FrameItem] = FrameSlot("every", depth=2)
    engine = InferenceEngine(slot, stats, sinks=[Collect()])
    frame = np.random.default_rng(0).integers(0, 255, size=(SOURCE_H, SOURCE_W, 3), dtype=np.uint8)

    found = engine.detect_frame(model, frame)

    assert [(d.label, d.score) for d in found] == [("person", 0.91), ("car", 0.74), ("dog", 0.55)]
    for detection, (box, _, _) in zip(found, TRUTH, strict=True):
        assert [detection.x1, detection.y1, detection.x2, detection.y2] == pytest.approx(box, abs=0.02)
    # Through the loop's path: the window counts objects per class, and the result carries the boxes.
    # The second frame is a camera's region of interest cut at (30, 40): its boxes come back in
    # the full frame's pixels.
    engine.swap(model)
    slot.put(FrameItem(seq=1, frame=frame))
    slot.put(FrameItem(seq=2, frame=frame, origin=(30, 40)))
    engine.start()
    engine.drain(10)
    engine.stop()
    window = stats.snapshot_and_reset()
    assert window.detection is not None
    assert window.detection.object_counts == {"person": 2, "car": 2, "dog": 2}
    assert window.detection.mean_box_score == pytest.approx((0.91 + 0.74 + 0.55) / 3, abs=1e-4)
    assert window.detection.boxes_per_frame == 3 and window.class_counts == {}
    document = emitted[0].to_json_dict()
    assert [d["label"] for d in document["detections"]] == ["person", "car", "dog"]
    shifted = emitted[1].detections
    assert shifted is not None
    for moved, (box, _, _) in zip(shifted, TRUTH, strict=True):
        assert [moved.x1, moved.y1, moved.x2, moved.y2] == pytest.approx(
            [box[0] + 30, box[1] + 40, box[2] + 30, box[3] + 40], abs=0.02)


def test_a_detection_model_whose_output_does_not_fit_its_decoder_does_not_load(tmp_path: Path) -> None:
    model_path = _detector_onnx(tmp_path / "det.onnx", _yolo_raw_output(100).transpose(0, 2, 1).copy())
    manifest = _manifest(model_path, task="detection", detection=_detection("yolo_raw"))
    with pytest.raises(Exception, match=r"yolo_raw expects output 1 x \(4\+C\) x N"):
        load_model(manifest, tmp_path)


def test_letterbox_pads_with_the_pad_value_where_the_decoder_expects_padding() -> None:
    from agent.preprocess import preprocess

    frame = np.full((SOURCE_H, SOURCE_W, 3), 255, dtype=np.uint8)
    tensor = preprocess(frame, SPEC)
    # 640x360 -> 320x180 placed 70 rows down: (320 - 180) // 2.
    top = source_to_input(np.asarray([[0.0, 0.0, 640.0, 360.0]]), SPEC, SOURCE_W, SOURCE_H)[0]
    assert top.tolist() == [0.0, 70.0, 320.0, 250.0]
    assert tensor[0, :, 69, :] == pytest.approx(114 / 255) and tensor[0, :, 70, :] == pytest.approx(1.0)
    assert tensor[0, :, 249, :] == pytest.approx(1.0) and tensor[0, :, 250, :] == pytest.approx(114 / 255)


def test_classification_results_keep_their_json_lines(tmp_path: Path) -> None:
    import json

    from agent.results import JsonLinesSink

    sink = JsonLinesSink(tmp_path / "results.jsonl", flush_every_lines=1)
    sink.emit(FrameResult(pipeline="main", frame_seq=1, model_version="v1", label="cat", confidence=0.9,
                          latency_ms=1.0, inference_ms=0.5, at=1.0))
    sink.close()
    line = json.loads((tmp_path / "results.jsonl").read_text())
    assert set(line) == {"pipeline", "frame_seq", "model_version", "label", "confidence", "latency_ms",
                         "inference_ms", "at", "captured_at", "capture_to_result_ms"}
