"""``edgefleet data ...``: datasets: synthesize, validate, ingest, list (local data directory)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from sqlmodel import Session

from cloud.cli.client import cell, new_table
from cloud.cli.local import JsonOption, console, emit, issues_table, local_context, user_errors
from cloud.pipeline.data.synth import write_synthetic_dataset
from cloud.pipeline.data.video import (
    SHIFTS,
    DetectionVideoSettings,
    VideoSettings,
    VideoSummary,
    write_detection_video,
    write_scene_video,
)
from cloud.pipeline.presets import QUICKSTART
from cloud.pipeline.registry import store

data_app = typer.Typer(help="Datasets: synthesize, validate, ingest, list; test videos.", no_args_is_help=True)


# --- data --------------------------------------------------------------------
@data_app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Argument(help="directory to write <class>/<n>.png and metadata.csv into")],
    per_class: Annotated[int, typer.Option(min=1, help="images per class (the quick-start default trains a model "
                                                      "that passes the validation gate)")] = QUICKSTART.images_per_class,
    size: Annotated[int, typer.Option(min=16, max=1024)] = QUICKSTART.image_size,
    seed: int = QUICKSTART.dataset_seed,
    blur: Annotated[float, typer.Option(min=0)] = 0.0,
    noise: Annotated[float, typer.Option(min=0)] = 3.0,
) -> None:
    """Generate a synthetic labelled scene dataset (4 classes; lighting and camera metadata for slices)."""

    with user_errors():
        write_synthetic_dataset(out, images_per_class=per_class, size=size, seed=seed, blur_sigma=blur,
                                noise_std=noise)
    console.print(f"wrote {per_class * 4} images and metadata.csv to {out}")


@data_app.command("video")
def data_video(
    out: Annotated[Path, typer.Argument(help="the video file to write (.avi or .mkv; an agent's `source`)")],
    seconds: Annotated[float, typer.Option(help="length; an agent loops a file")] = 20.0,
    fps: Annotated[float, typer.Option(help="frames per second")] = 10.0,
    size: Annotated[int, typer.Option(help="the scene's side in px: the dataset's --size")] = QUICKSTART.image_size,
    width: Annotated[int | None, typer.Option(help="frame width, when larger than the scene [default: --size]")] = None,
    height: Annotated[int | None, typer.Option(help="frame height [default: --size]")] = None,
    frames_per_scene: Annotated[int, typer.Option(help="frames each scene is held for")] = 2,
    seed: Annotated[int, typer.Option(help="different seeds, different scenes")] = 0,
    noise: Annotated[float, typer.Option(help="pixel noise, as `data synth --noise`")] = 3.0,
    shift: Annotated[str, typer.Option(help=f"how the scene changes: {', '.join(SHIFTS)}")] = "none",
    shift_at: Annotated[float, typer.Option(help="seconds into the video the shift starts")] = 0.0,
    task: Annotated[str, typer.Option(help="classification: scenes of `data synth`; detection: scenes of "
                                           "`data synth-detection` (200x150 unless --width/--height)")] = "classification",
) -> None:
    """Write a test video of synthetic scenes for an agent's `source`; --shift makes the camera whose scene changed.

    The scenes are those of `edgefleet data synth` (same shapes, lighting mix and noise), so a model
    trained on a synthetic dataset sees nothing unusual in a video without a shift. With
    `--task detection` they are those of `edgefleet data synth-detection` (one to four objects per frame).
    """
    with user_errors():
        if task not in ("classification", "detection"):
            raise ValueError(f"--task must be classification or detection, not {task!r}")
        if task == "detection" and shift != "none":
            raise ValueError("--shift applies to classification scenes; leave it out with --task detection")
        try:
            summary: VideoSummary
            if task == "detection":
                summary = write_detection_video(out, DetectionVideoSettings(
                    seconds=seconds, fps=fps, width=width or 200, height=height or 150,
                    frames_per_scene=frames_per_scene, seed=seed))
            else:
                summary = write_scene_video(out, VideoSettings(
                    seconds=seconds, fps=fps, size=size, width=width, height=height,
                    frames_per_scene=frames_per_scene, seed=seed, noise=noise, shift=shift, shift_at_s=shift_at))
        except RuntimeError as exc:
            console.print(f"[red]error:[/] {exc}")
            raise typer.Exit(1) from None
    change = (f"; from {shift_at:g} s on ({summary.shifted_frames} frames): {SHIFTS[shift].meaning}"
              if shift != "none" else "")
    console.print(f"wrote {out}: {summary.frames} frames, {summary.width}x{summary.height} at {fps:g} fps{change}",
                  highlight=False)


@data_app.command("synth-detection")
def data_synth_detection(
    out: Annotated[Path, typer.Argument(help="directory to write images/, labels/, classes.txt, metadata.csv into")],
    images: Annotated[int, typer.Option(min=1)] = 600,
    seed: int = 0,
    object_scale: Annotated[float, typer.Option(help="multiply object sizes (0.4: shrunken objects)")] = 1.0,
    class_weights: Annotated[str | None, typer.Option(
        help="relative frequency of circle,square,triangle, e.g. 1,1,8 (default equal)")] = None,
) -> None:
    """Generate synthetic detection scenes in YOLO layout (1-4 shapes of 3 classes per frame; lighting, camera).

    ``--object-scale`` and ``--class-weights`` write shifted scenes (for drift tests).
    """
    from cloud.pipeline.data.synth_detection import write_detection_dataset

    with user_errors():
        try:
            weights = tuple(float(w) for w in class_weights.split(",")) if class_weights else None
        except ValueError:
            raise ValueError(f"--class-weights must be numbers separated by commas, got {class_weights!r}") from None
        write_detection_dataset(out, images=images, seed=seed, object_scale=object_scale, class_weights=weights)
    console.print(f"wrote {images} frames with YOLO labels, classes.txt and metadata.csv to {out}")


@data_app.command("validate")
def data_validate(
    root: Annotated[Path, typer.Argument(help="ImageFolder directory, or a YOLO or COCO detection dataset")],
    as_json: JsonOption = False,
    data_format: Annotated[str, typer.Option("--format", help="auto, imagefolder, yolo or coco")] = "auto",
) -> None:
    """Check a directory before ingesting: corrupt files, duplicates, tiny classes, odd sizes; for detection
    datasets boxes outside the image, zero-area boxes, unknown classes, leakage. Exit 1 on blocking errors."""
    # Imported here: it pulls in torch, which the API and CLI keep out of start-up.
    from cloud.pipeline.service import ingest_layout, validate_directory

    with user_errors():
        layout = ingest_layout(root, data_format)
    if layout in ("yolo", "coco"):
        _validate_detection(root, layout, as_json)
        return
    with user_errors():
        report = validate_directory(root)
    issues = [i.as_dict() for i in report.issues]

    def human() -> None:
        issues_table(issues)
        console.print(f"{report.dataset_id}: {report.usable_images} usable images, "
                      f"{len(report.excluded_files)} excluded")

    emit(as_json, {"dataset_id": report.dataset_id, "ok": report.ok, "usable_images": report.usable_images,
                    "excluded_files": report.excluded_files, "issues": issues}, human)
    if not report.ok:
        raise typer.Exit(1)


def _validate_detection(root: Path, layout: str, as_json: bool) -> None:
    from cloud.pipeline.detection_service import validate_detection_directory

    with user_errors():
        report = validate_detection_directory(root, layout)

    def human() -> None:
        issues_table([i.as_dict() for i in report.issues])
        console.print(f"{report.dataset_id}: {report.images} images, {report.boxes} boxes, "
                      f"{report.unlabelled_images} without boxes, {len(report.errors())} errors")

    emit(as_json, report.summary(), human)
    if not report.ok:
        raise typer.Exit(1)


@data_app.command("ingest")
def data_ingest(
    root: Annotated[Path, typer.Argument(help="ImageFolder directory, a YOLO-layout detection dataset, or a COCO "
                                              "detection directory (annotations.json + images/)")],
    as_json: JsonOption = False,
    data_format: Annotated[str, typer.Option("--format", help="auto, imagefolder, yolo or coco; auto recognises "
                                                              "the layout")] = "auto",
) -> None:
    """Validate and store a content-addressed dataset version (same bytes → same id).

    Detection datasets with validation errors (boxes outside the image, zero-area boxes, unknown
    classes, unreadable images) are refused with each file named; warnings are listed.
    """
    # Imported here: it pulls in torch, which the API and CLI keep out of start-up.
    from cloud.pipeline.service import ingest

    engine, paths = local_context()
    with user_errors():
        result = ingest(engine, paths, root, layout=data_format)
    record = result.record

    def human() -> None:
        if record.issues:
            issues_table(record.issues)
        splits = {name: sum(counts.values()) for name, counts in record.split_counts.items()}
        console.print(f"dataset {record.id}: {record.image_count} images ({record.excluded_count} excluded), "
                      f"splits {splits}")

    emit(as_json, record.model_dump(mode="json"), human)


@data_app.command("list")
def data_list(as_json: JsonOption = False) -> None:
    """List ingested dataset versions."""
    engine, _ = local_context()
    with Session(engine) as session:
        records = [r.model_dump(mode="json") for r in store.list_datasets(session)]

    def human() -> None:
        table = new_table("datasets")
        for column in ("id", "images", "excluded", "labels", "created"):
            table.add_column(column)
        for r in records:
            table.add_row(r["id"], str(r["image_count"]), str(r["excluded_count"]), ",".join(r["labels"]), cell(r["created_at"]))
        Console().print(table)

    emit(as_json, records, human)
