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
from cloud.pipeline.registry import store

data_app = typer.Typer(help="Datasets: synthesize, validate, ingest, list.", no_args_is_help=True)


# --- data --------------------------------------------------------------------
@data_app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Argument(help="directory to write <class>/<n>.png and metadata.csv into")],
    per_class: Annotated[int, typer.Option(min=1)] = 200,
    size: Annotated[int, typer.Option(min=16, max=1024)] = 64,
    seed: int = 0,
    blur: Annotated[float, typer.Option(min=0)] = 0.0,
    noise: Annotated[float, typer.Option(min=0)] = 3.0,
) -> None:
    """Generate a synthetic labelled scene dataset (4 classes; lighting and camera metadata for slices)."""

    with user_errors():
        write_synthetic_dataset(out, images_per_class=per_class, size=size, seed=seed, blur_sigma=blur,
                                noise_std=noise)
    console.print(f"wrote {per_class * 4} images and metadata.csv to {out}")


@data_app.command("synth-detection")
def data_synth_detection(
    out: Annotated[Path, typer.Argument(help="directory to write images/, labels/, classes.txt, metadata.csv into")],
    images: Annotated[int, typer.Option(min=1)] = 600,
    seed: int = 0,
) -> None:
    """Generate synthetic detection scenes in YOLO layout (1-4 shapes of 3 classes per frame; lighting, camera)."""
    from cloud.pipeline.data.synth_detection import write_detection_dataset

    with user_errors():
        write_detection_dataset(out, images=images, seed=seed)
    console.print(f"wrote {images} frames with YOLO labels, classes.txt and metadata.csv to {out}")


@data_app.command("validate")
def data_validate(root: Annotated[Path, typer.Argument(help="ImageFolder directory")], as_json: JsonOption = False) -> None:
    """Check a directory before ingesting: corrupt files, duplicates, tiny classes, odd sizes. Exit 1 on blocking errors."""
    # Imported here: it pulls in torch, which the API and CLI keep out of start-up.
    from cloud.pipeline.service import validate_directory

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


@data_app.command("ingest")
def data_ingest(root: Annotated[Path, typer.Argument(help="ImageFolder directory, or a YOLO-layout detection dataset")], as_json: JsonOption = False) -> None:
    """Validate and store a content-addressed dataset version (same bytes → same id)."""
    # Imported here: it pulls in torch, which the API and CLI keep out of start-up.
    from cloud.pipeline.service import ingest

    engine, paths = local_context()
    with user_errors():
        result = ingest(engine, paths, root)
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
