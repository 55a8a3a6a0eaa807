"""Detection datasets: COCO import gives the YOLO layout's dataset id; validation names what to fix."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from cloud.cli import app
from cloud.pipeline.data.coco import scan_coco_dataset
from cloud.pipeline.data.dataset import split_for
from cloud.pipeline.data.detection import scan_detection_dataset
from cloud.pipeline.data.detection_validate import DetectionValidationReport, validate_detection_dataset
from cloud.pipeline.errors import PipelineInputError

SIDE = 32
# Per image: COCO boxes (category id, [x, y, w, h] in pixels). Category ids are deliberately
# not 0-based and declared out of order: "cat" (3) is class 0 and "dog" (9) class 1.
BOXES: dict[str, list[tuple[int, list[float]]]] = {
    "a.png": [(3, [4, 8, 16, 8]), (9, [0, 0, 32, 32])],
    "b.png": [(9, [8, 8, 8, 8])],
    "c.png": [],  # a negative frame
}
CATEGORIES = [{"id": 9, "name": "dog"}, {"id": 3, "name": "cat"}]
YOLO_CLASS = {3: 0, 9: 1}


def image_bytes(seed: int) -> bytes:
    """A tiny PNG whose difference hash differs from every other seed's."""
    pixels = np.random.default_rng(seed).integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)
    return cv2.imencode(".png", pixels)[1].tobytes()


def write_images(root: Path, names: list[str]) -> None:
    (root / "images").mkdir(parents=True)
    for seed, name in enumerate(names):
        (root / "images" / name).write_bytes(image_bytes(seed))


def write_yolo(root: Path, lines: dict[str, list[str]] | None = None) -> Path:
    write_images(root, list(BOXES))
    (root / "classes.txt").write_text("cat\ndog\n")
    (root / "labels").mkdir()
    for name, boxes in BOXES.items():
        if lines is None and not boxes:
            continue
        rows = [f"{YOLO_CLASS[c]} {(x + w / 2) / SIDE} {(y + h / 2) / SIDE} {w / SIDE} {h / SIDE}"
                for c, (x, y, w, h) in boxes]
        (root / "labels" / f"{Path(name).stem}.txt").write_text("\n".join((lines or {}).get(name, rows)) + "\n")
    return root


def write_coco(root: Path, extra: list[dict[str, object]] = ()) -> Path:  # type: ignore[assignment]
    write_images(root, list(BOXES))
    images = [{"id": 10 + i, "file_name": name, "width": SIDE, "height": SIDE} for i, name in enumerate(BOXES)]
    annotations = [{"id": len(images) * 10 + n, "image_id": 10 + i, "category_id": c, "bbox": bbox}
                   for i, boxes in enumerate(BOXES.values()) for n, (c, bbox) in enumerate(boxes)]
    document = {"images": images, "annotations": annotations + list(extra), "categories": CATEGORIES}
    (root / "annotations.json").write_text(json.dumps(document))
    return root


def kinds(report: DetectionValidationReport) -> list[tuple[str, str, str]]:
    return [(i.kind, i.severity, i.file) for i in report.issues]


def test_coco_and_yolo_copies_of_the_same_data_have_the_same_id(tmp_path: Path) -> None:
    yolo = scan_detection_dataset(write_yolo(tmp_path / "yolo"))
    coco = scan_coco_dataset(write_coco(tmp_path / "coco"))
    assert coco.labels == yolo.labels == ["cat", "dog"]
    assert coco.dataset_id == yolo.dataset_id
    assert [s.boxes for s in coco.samples] == [s.boxes for s in yolo.samples]
    # The id follows the boxes: one pixel moved in the COCO copy gives another id.
    moved = write_coco(tmp_path / "moved")
    document = json.loads((moved / "annotations.json").read_text())
    document["annotations"][0]["bbox"][0] += 1
    (moved / "annotations.json").write_text(json.dumps(document))
    assert scan_coco_dataset(moved).dataset_id != yolo.dataset_id


def test_clean_dataset_counts_unlabelled_images_without_blocking(tmp_path: Path) -> None:
    report = validate_detection_dataset(scan_detection_dataset(write_yolo(tmp_path / "yolo")))
    assert report.ok and report.issues == []
    assert (report.images, report.boxes, report.unlabelled_images) == (3, 3, 1)


def test_box_outside_the_image_is_an_error_beyond_the_tolerance(tmp_path: Path) -> None:
    # x2 = 1.005 is rounding (kept); x2 = 1.1 is a wrong box.
    root = write_yolo(tmp_path / "yolo", {"a.png": ["0 0.805 0.5 0.4 0.2", "1 0.9 0.5 0.4 0.2"]})
    report = validate_detection_dataset(scan_detection_dataset(root))
    assert kinds(report) == [("box_outside_image", "error", "labels/a.txt:2")]
    assert "x 0.700..1.100" in report.issues[0].reason


def test_zero_area_box_is_an_error_naming_the_coco_annotation(tmp_path: Path) -> None:
    root = write_coco(tmp_path / "coco", [{"id": 77, "image_id": 11, "category_id": 3, "bbox": [5, 5, 0, 4]}])
    report = validate_detection_dataset(scan_coco_dataset(root))
    assert kinds(report) == [("zero_area_box", "error", "annotations.json: annotation 77")]
    assert report.issues[0].reason.startswith("images/b.png: box has zero area")


def test_class_out_of_range_is_an_error_in_both_layouts(tmp_path: Path) -> None:
    yolo = write_yolo(tmp_path / "yolo", {"b.png": ["2 0.5 0.5 0.2 0.2"]})
    report = validate_detection_dataset(scan_detection_dataset(yolo))
    assert kinds(report) == [("class_out_of_range", "error", "labels/b.txt:1")]
    assert "class 2 is outside 0..1" in report.issues[0].reason
    coco = write_coco(tmp_path / "coco", [{"id": 78, "image_id": 10, "category_id": 4, "bbox": [1, 1, 4, 4]}])
    report = validate_detection_dataset(scan_coco_dataset(coco))
    assert kinds(report) == [("class_out_of_range", "error",
                              "annotations.json: annotation 78 (category_id 4 is not in 'categories')")]


def test_exact_duplicate_images_are_a_warning(tmp_path: Path) -> None:
    root = write_yolo(tmp_path / "yolo")
    (root / "images" / "d.png").write_bytes((root / "images" / "a.png").read_bytes())
    report = validate_detection_dataset(scan_detection_dataset(root))
    assert report.ok and kinds(report) == [("duplicate", "warning", "images/d.png")]


def test_near_duplicates_across_splits_are_reported_as_leakage(tmp_path: Path) -> None:
    root = write_yolo(tmp_path / "yolo")
    # Brightness-shifted copies of one scene not otherwise in the dataset, until one lands in train and one not.
    original = cv2.imdecode(np.frombuffer(image_bytes(100), np.uint8), cv2.IMREAD_COLOR)
    shifted = [cv2.imencode(".png", np.clip(original.astype(int) + shift, 0, 255).astype(np.uint8))[1].tobytes()
               for shift in (*range(1, 40), *range(-1, -40, -1))]
    train_copy = next(data for data in shifted if split_for(hashlib.sha256(data).hexdigest()) == "train")
    holdout_copy = next(data for data in shifted if split_for(hashlib.sha256(data).hexdigest()) != "train")
    (root / "images" / "e.png").write_bytes(train_copy)
    (root / "images" / "f.png").write_bytes(holdout_copy)
    report = validate_detection_dataset(scan_detection_dataset(root))
    leaks = [i for i in report.issues if i.kind == "cross_split_duplicate"]
    assert report.ok and [i.file for i in leaks] == ["images/f.png"], leaks
    assert "near-duplicate of images/e.png (train)" in leaks[0].reason


def test_unreadable_image_is_an_error(tmp_path: Path) -> None:
    root = write_yolo(tmp_path / "yolo")
    (root / "images" / "z.png").write_bytes(b"\x89PNG not really")
    report = validate_detection_dataset(scan_detection_dataset(root))
    assert kinds(report) == [("corrupt", "error", "images/z.png")]


def test_malformed_coco_names_the_file(tmp_path: Path) -> None:
    root = write_coco(tmp_path / "coco", [{"id": 79, "image_id": 99, "category_id": 3, "bbox": [1, 1, 4, 4]}])
    with pytest.raises(PipelineInputError, match=r"annotations\.json: annotation 79 names image_id 99"):
        scan_coco_dataset(root)


def test_cli_ingests_coco_with_counts_and_refuses_invalid_yolo(cli_env: Path) -> None:
    runner = CliRunner()
    yolo_id = scan_detection_dataset(write_yolo(cli_env / "yolo")).dataset_id
    coco = write_coco(cli_env / "coco")
    (coco / "images" / "d.png").write_bytes((coco / "images" / "a.png").read_bytes())
    document = json.loads((coco / "annotations.json").read_text())
    document["images"].append({"id": 50, "file_name": "d.png", "width": SIDE, "height": SIDE})
    (coco / "annotations.json").write_text(json.dumps(document))

    ingested = runner.invoke(app, ["data", "ingest", str(coco), "--json"])
    assert ingested.exit_code == 0, ingested.output
    record = json.loads(ingested.stdout)
    assert record["labels"] == ["cat", "dog"] and record["image_count"] == 4
    assert record["id"] != yolo_id  # d.png is an extra, unlabelled image
    assert {(i["kind"], i["file"]) for i in record["issues"]} == {("duplicate", "images/d.png"),
                                                                   ("unlabelled", "images/")}
    assert "2 of 4 images have no boxes" in next(i["reason"] for i in record["issues"] if i["kind"] == "unlabelled")

    same = runner.invoke(app, ["data", "ingest", str(cli_env / "yolo"), "--format", "yolo", "--json"])
    assert same.exit_code == 0 and json.loads(same.stdout)["id"] == yolo_id

    bad = write_yolo(cli_env / "bad", {"a.png": ["0 0.5 0.5 0 0.2"]})
    validated = runner.invoke(app, ["data", "validate", str(bad), "--json"])
    report = json.loads(validated.stdout)
    assert validated.exit_code == 1 and not report["ok"] and report["counts"] == {"zero_area_box": 1}
    assert report["issues"][0]["file"] == "labels/a.txt:1"
    refused = runner.invoke(app, ["data", "ingest", str(bad)])
    message = " ".join(refused.output.split())
    assert refused.exit_code == 2 and "labels/a.txt:1" in message and "zero area" in message, message
    wrong = runner.invoke(app, ["data", "ingest", str(bad), "--format", "voc"])
    assert wrong.exit_code == 2 and "unknown dataset format" in wrong.output
