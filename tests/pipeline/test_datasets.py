"""Datasets: content addressing, deterministic splits, validation with file + reason."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from cloud.pipeline.data.dataset import load_stored_dataset, scan_imagefolder, split_for
from cloud.pipeline.data.synth import write_synthetic_dataset
from cloud.pipeline.data.validate import validate_dataset
from cloud.pipeline.errors import PipelineInputError


def _synth(root: Path, per_class: int = 12, seed: int = 0) -> Path:
    return write_synthetic_dataset(root, images_per_class=per_class, seed=seed)


def test_same_data_gives_the_same_dataset_id(tmp_path: Path) -> None:
    first = scan_imagefolder(_synth(tmp_path / "a"))
    second = scan_imagefolder(_synth(tmp_path / "b"))  # same bytes, another place
    assert first.dataset_id == second.dataset_id
    assert [s.split for s in first.samples] == [s.split for s in second.samples]

    # One changed image changes the id; so does a changed metadata value (it defines slices).
    image = tmp_path / "b" / "circle" / "00000.png"
    pixels = cv2.imread(str(image))
    pixels[0, 0] = (pixels[0, 0].astype(int) + 1) % 256
    cv2.imwrite(str(image), pixels)
    assert scan_imagefolder(tmp_path / "b").dataset_id != first.dataset_id
    metadata = tmp_path / "a" / "metadata.csv"
    metadata.write_text(metadata.read_text().replace("cam0", "cam9", 1))
    assert scan_imagefolder(tmp_path / "a").dataset_id != first.dataset_id


def test_split_comes_from_content_and_survives_additions(tmp_path: Path) -> None:
    root = _synth(tmp_path / "data", per_class=30)
    before = {s.sha256: s.split for s in scan_imagefolder(root).samples}
    _synth(tmp_path / "more", per_class=40, seed=9)
    for label in ("circle", "square"):
        for path in sorted((tmp_path / "more" / label).iterdir())[:10]:
            shutil.copyfile(path, root / label / f"extra-{path.name}")
    after = scan_imagefolder(root)
    assert all(before[s.sha256] == s.split for s in after.samples if s.sha256 in before)
    assert {s.split for s in after.samples} == {"train", "val", "test"}
    assert split_for("0" * 64) == "train"  # bucket 0


def test_corrupt_image_is_reported_and_excluded(tmp_path: Path) -> None:
    root = _synth(tmp_path / "data")
    (root / "circle" / "garbage.png").write_bytes(b"this is not a png")
    (root / "square" / "empty.jpg").write_bytes(b"")
    good = (root / "triangle" / "00000.png").read_bytes()
    (root / "triangle" / "truncated.png").write_bytes(good[:40])

    dataset, report = validate_dataset(scan_imagefolder(root))

    corrupt = {i.file: i.reason for i in report.issues if i.kind == "corrupt"}
    assert set(corrupt) == {"circle/garbage.png", "square/empty.jpg", "triangle/truncated.png"}
    assert "empty file" in corrupt["square/empty.jpg"]
    assert all("excluded" in reason for reason in corrupt.values())
    assert sorted(report.excluded_files) == sorted(corrupt)
    assert not {s.relative for s in dataset.samples} & set(corrupt)
    assert report.ok  # corrupt files are excluded, they do not block training
    # The version's id names what training sees: the same as the directory without the bad files.
    for name in corrupt:
        (root / name).unlink()
    assert dataset.dataset_id == scan_imagefolder(root).dataset_id


def test_validation_reports_duplicates_tiny_classes_and_odd_sizes(tmp_path: Path) -> None:
    root = _synth(tmp_path / "data", per_class=40)
    # A tiny class.
    (root / "rare").mkdir()
    for index in range(3):
        shutil.copyfile(root / "cross" / f"{index:05d}.png", root / "rare" / f"r{index}.png")
    # An exact duplicate inside a class.
    shutil.copyfile(root / "circle" / "00001.png", root / "circle" / "copy.png")
    # An odd size (and an extreme aspect ratio).
    cv2.imwrite(str(root / "square" / "strip.png"), np.full((10, 200, 3), 90, dtype=np.uint8))
    # A near-duplicate of a training image that lands in another split: one pixel changed,
    # chosen so that its content hash puts it outside train.
    train_image = next(s for s in scan_imagefolder(root).samples if s.split == "train" and s.label == "circle")
    pixels = cv2.imread(str(train_image.path))
    for value in range(256):
        pixels[0, 0] = (value, value, value)
        encoded = cv2.imencode(".png", pixels)[1].tobytes()
        if split_for(hashlib.sha256(encoded).hexdigest()) != "train":
            (root / "circle" / "near.png").write_bytes(encoded)
            break

    _, report = validate_dataset(scan_imagefolder(root))
    by_kind: dict[str, list[str]] = {}
    for issue in report.issues:
        by_kind.setdefault(issue.kind, []).append(issue.file)
        assert issue.reason
    assert "rare/" in by_kind["tiny_class"]
    assert "circle/copy.png" in by_kind["duplicate"] or "circle/00001.png" in by_kind["duplicate"]
    # The rare class copies crosses: same bytes, different label.
    assert by_kind["label_conflict"]
    assert "square/strip.png" in by_kind["odd_size"]
    assert "circle/near.png" in by_kind["cross_split_duplicate"]


def test_empty_class_blocks_training_and_bad_directories_are_clear_errors(tmp_path: Path) -> None:
    root = _synth(tmp_path / "data")
    (root / "ghost").mkdir()
    _, report = validate_dataset(scan_imagefolder(root))
    assert not report.ok
    assert any(i.kind == "empty_class" and i.file == "ghost/" for i in report.issues)

    with pytest.raises(PipelineInputError, match="does not exist"):
        scan_imagefolder(tmp_path / "nowhere")
    (tmp_path / "one" / "only").mkdir(parents=True)
    with pytest.raises(PipelineInputError, match="at least two class directories"):
        scan_imagefolder(tmp_path / "one")


def test_ingest_stores_a_content_addressed_version_with_metadata(engine, paths, tmp_path: Path) -> None:
    from sqlmodel import Session

    from cloud.pipeline.registry import store
    from cloud.pipeline.service import ingest

    root = _synth(tmp_path / "data")
    (root / "circle" / "bad.png").write_bytes(b"junk")
    first = ingest(engine, paths, root)
    again = ingest(engine, paths, root)
    assert first.record.id == again.record.id
    assert first.record.excluded_count == 1
    shutil.rmtree(root)  # the stored version no longer needs its source
    stored = load_stored_dataset(paths.datasets_dir, first.record.id)
    assert len(stored.samples) == 48 and all(s.path.exists() for s in stored.samples)
    assert stored.metadata_fields == ["lighting", "camera"]
    assert set(stored.samples[0].meta) == {"lighting", "camera"}
    with Session(engine) as session:
        assert [d.id for d in store.list_datasets(session)] == [first.record.id]
