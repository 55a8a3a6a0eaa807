"""``edgefleet model ...``, ``edgefleet train`` and ``edgefleet build``: the model registry and the pipeline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from sqlmodel import Session

from agent.profiles import load_profiles
from cloud.cli.client import (
    DEFAULT_SERVER,
    Exit,
    JsonOpt,
    OptionalServerOpt,
    ServerOpt,
    TokenOpt,
    call,
    cell,
    emit_json,
    fail,
    new_table,
)
from cloud.cli.client import console as stdout_console
from cloud.cli.governance import validation_summary
from cloud.cli.jobs import finish_watch, watch_job
from cloud.cli.local import JsonOption, ProfileOption, console, emit, local_actor, local_context, user_errors
from cloud.fleet import crud
from cloud.pipeline.evaluate.gates import QuantizationGateConfig, ValidationThresholds
from cloud.pipeline.presets import QUICKSTART

model_app = typer.Typer(help="The model registry: list, show, import, promote.", no_args_is_help=True)


@model_app.command("lineage")
def model_lineage(version: str, server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None,
                  json_out: JsonOpt = False) -> None:
    """The chain from data to devices: datasets (and the samples they added), packages, rollouts, devices."""
    result: dict[str, Any] = call(server, token, "GET", f"/api/v1/governance/lineage/{version}")
    if json_out:
        emit_json(result)
        return
    stdout_console.print(f"[bold]{result['model_name']} {result['model_version']}[/] created {cell(result['created_at'])}"
                  f" (code {cell(result['code_version'])})")
    for dataset in result["datasets"]:
        added = ""
        if dataset["origin"] == "retraining":
            devices = ", ".join(f"{d}: {n}" for d, n in dataset["samples_by_device"].items())
            added = f" + {dataset['added_samples']} samples ({devices}) labelled by {', '.join(dataset['labelled_by'])}"
        stdout_console.print(f"  data    {dataset['dataset_id']} ({dataset['origin']}){added}")
    for proposal in result["retraining_proposals"]:
        stdout_console.print(f"  trigger alerts {', '.join(proposal['alerts'])} on {', '.join(proposal['devices'])}; "
                      f"validation {validation_summary(proposal['validation'])}")
    stdout_console.print(f"  package {', '.join(result['packages']) or '-'}")
    for rollout in result["rollout_proposals"]:
        stdout_console.print(f"  rollout {rollout['id']} {rollout['state']} by {cell(rollout['decided_by'])} → "
                      f"{', '.join(rollout['devices'])} (rollout {cell(rollout['rollout_id'])})")
    stdout_console.print(f"  devices running it: {', '.join(result['devices_running']) or '-'}")
    for event in result["audit"]:
        stdout_console.print(f"    {str(event['at'])[:19]} {event['actor']}: {event['action']} {event['subject']}")


# --- train -------------------------------------------------------------------
def train(
    dataset: Annotated[str | None, typer.Option(help="an ingested dataset id (ds-...)")] = None,
    data: Annotated[Path | None, typer.Option(help="an ImageFolder directory to ingest first")] = None,
    name: str = "shapes",
    profile: Annotated[str | None, typer.Option(help="take width and input size from this firmware profile")] = None,
    input_size: Annotated[int | None, typer.Option(min=16, max=1024, help="override the input size (px)")] = None,
    width: Annotated[float | None, typer.Option(min=0.1, max=2.0, help="override the width multiplier")] = None,
    architecture: Annotated[str | None, typer.Option(help="mobilenetv2 | compact")] = None,
    epochs: Annotated[int, typer.Option(min=1)] = QUICKSTART.epochs,
    batch_size: Annotated[int, typer.Option(min=2)] = QUICKSTART.batch_size,
    learning_rate: Annotated[float, typer.Option(min=1e-6)] = QUICKSTART.learning_rate,
    seed: int = 0,
    threads: Annotated[int, typer.Option(min=1)] = 1,
    min_accuracy: Annotated[float, typer.Option(min=0, max=1)] = 0.8,
    min_slice_accuracy: Annotated[float, typer.Option(min=0, max=1)] = 0.7,
    max_regression_pp: Annotated[float, typer.Option(min=0)] = 1.0,
    as_json: JsonOption = False,
    server: OptionalServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """Train the MobileNetV2-style model, evaluate it, gate it (validated/rejected) and register its lineage.

    Without --profile the demo's small defaults apply (64 px, compact, width 0.75); the defaults train a
    model of the default `edgefleet data synth` dataset that passes the gate (cloud/pipeline/presets.py).
    """
    if (dataset is None) == (data is None):
        fail("give exactly one of --dataset ds-... or --data DIR", Exit.BAD_INPUT)
    if server is not None:
        if dataset is None:
            fail(f"--data reads a folder on this machine, but training runs on the control plane at {server}: "
                 "ingest the folder there and give --dataset ds-...", Exit.BAD_INPUT)
        body: dict[str, Any] = {
            "dataset_id": dataset, "name": name, "profile": profile, "input_size": input_size,
            "width_multiplier": width, "architecture": architecture, "epochs": epochs, "batch_size": batch_size,
            "learning_rate": learning_rate, "seed": seed, "min_accuracy": min_accuracy,
            "min_slice_accuracy": min_slice_accuracy, "max_regression_pp": max_regression_pp}
        payload: dict[str, Any] = _run_job(server, token, "/api/v1/models/train", body, as_json)
    else:
        payload = _train_here(dataset=dataset, data=data, name=name, profile=profile, input_size=input_size,
                              width=width, architecture=architecture, epochs=epochs, batch_size=batch_size,
                              learning_rate=learning_rate, seed=seed, threads=threads, min_accuracy=min_accuracy,
                              min_slice_accuracy=min_slice_accuracy, max_regression_pp=max_regression_pp,
                              show_progress=not as_json)
    emit(as_json, payload, lambda: console.print(
        f"{payload['model_version']}: {payload['status']} (test accuracy {payload['accuracy']})"
        + "".join(f"\n  - {r}" for r in payload["reasons"])))


def _run_job(server: str, token: str | None, path: str, body: dict[str, Any], as_json: bool) -> dict[str, Any]:
    """Start the job the route queues and follow it; its result is what the command prints.

    Exits non-zero (with the job's error) when it fails or is cancelled.
    """
    queued: dict[str, Any] = call(server, token, "POST", path, body)
    job = watch_job(server, token, str(queued["job_id"]), json_out=as_json)
    if job["state"] != "succeeded":
        finish_watch(job, json_out=as_json)
    result: dict[str, Any] = job["result"] or {}
    return result


def _train_here(*, dataset: str | None, data: Path | None, name: str, profile: str | None, input_size: int | None,
                width: float | None, architecture: str | None, epochs: int, batch_size: int, learning_rate: float,
                seed: int, threads: int, min_accuracy: float, min_slice_accuracy: float, max_regression_pp: float,
                show_progress: bool) -> dict[str, Any]:
    # Imported here: it pulls in torch, which the API and CLI keep out of start-up.
    from cloud.pipeline.service import ingest, train_model
    from cloud.pipeline.train.trainer import DEFAULT_SPEC, TrainConfig, spec_for_input_size

    engine, paths = local_context()
    with user_errors():
        if data is not None:
            dataset = ingest(engine, paths, data).record.id
        assert dataset is not None
        overrides: dict[str, Any] = {"epochs": epochs, "batch_size": batch_size, "learning_rate": learning_rate,
                                     "seed": seed, "threads": threads}
        if width is not None:
            overrides["width_multiplier"] = width
        if architecture is not None:
            if architecture not in ("mobilenetv2", "compact"):
                raise ValueError("--architecture must be mobilenetv2 or compact")
            overrides["architecture"] = architecture
        if profile is not None:
            profiles = load_profiles()
            if profile not in profiles:
                raise ValueError(f"unknown profile {profile!r}; known: {', '.join(sorted(profiles))}")
            config = TrainConfig.for_profile(profiles[profile], **overrides)
            spec = spec_for_input_size(input_size or profiles[profile].input_size)
        else:
            config = TrainConfig(**overrides)
            spec = spec_for_input_size(input_size) if input_size else DEFAULT_SPEC
        thresholds = ValidationThresholds(min_accuracy=min_accuracy, min_slice_accuracy=min_slice_accuracy,
                                          max_regression_pp=max_regression_pp)
        outcome = train_model(engine, paths, dataset_id=dataset, name=name, config=config, spec=spec,
                              thresholds=thresholds, show_progress=show_progress)
    return {"model_version": outcome.model_version, "status": outcome.status,
            "accuracy": outcome.evaluation.accuracy if outcome.evaluation else None,
            # Detection models: mAP@0.5 on the test split through the agent's decoder.
            **({"map_50": outcome.detection.map_50} if outcome.detection else {}),
            "reasons": outcome.decision.reasons, "notes": outcome.decision.notes}


# --- build -------------------------------------------------------------------
def build(
    version: Annotated[str, typer.Argument(help="model version, e.g. shapes-3")],
    profile: ProfileOption = None,
    calibration_method: Annotated[str | None, typer.Option(help="minmax | entropy | percentile")] = None,
    per_channel: Annotated[bool | None, typer.Option("--per-channel/--per-tensor", help="weight quantization granularity")] = None,
    calibration_images: Annotated[int, typer.Option(min=1)] = 128,
    max_drop_pp: Annotated[float, typer.Option(min=0, help="INT8 accuracy drop limit, percentage points")] = 1.0,
    allow_unvalidated: Annotated[bool, typer.Option(help="build a model the validation gate did not pass")] = False,
    no_nncf: Annotated[bool, typer.Option("--no-nncf", help="OpenVINO INT8 from the QDQ ONNX instead of NNCF")] = False,
    as_json: JsonOption = False,
    server: OptionalServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """Build, evaluate and gate every artifact each profile can use, and package the accepted ones."""
    if server is not None:
        if not profile:
            fail("give the profiles to build for (--profile, repeatable)", Exit.BAD_INPUT)
        body = {"profiles": profile, "calibration_method": calibration_method, "per_channel": per_channel,
                "calibration_images": calibration_images, "max_accuracy_drop_pp": max_drop_pp,
                "allow_unvalidated": allow_unvalidated}
        payload = _run_job(server, token, f"/api/v1/models/{version}/builds", body, as_json)
    else:
        # Imported here: it pulls in torch, which the API and CLI keep out of start-up.
        from cloud.pipeline.service import build_model

        engine, paths = local_context()
        with user_errors():
            overrides = {"calibration_method": calibration_method, "per_channel": per_channel}
            result = build_model(engine, paths, version=version, profiles=profile or [],
                                 quantization_overrides={k: v for k, v in overrides.items() if v is not None},
                                 gate=QuantizationGateConfig(max_accuracy_drop_pp=max_drop_pp),
                                 calibration_images=calibration_images, allow_unvalidated=allow_unvalidated,
                                 use_nncf=not no_nncf, log=(lambda _: None) if as_json else console.print)
        payload = {"build_id": result.build_id, "model_version": result.model_version,
                   "package_id": result.package_id, "artifacts": [a.summary() for a in result.outcome.artifacts],
                   "notes": result.notes}
    artifacts: list[dict[str, Any]] = payload["artifacts"]
    notes: list[dict[str, Any]] = payload["notes"]

    def human() -> None:
        table = new_table(f"build {payload['build_id']} → package {payload['package_id']}")
        for column in ("file", "runtime", "precision", "accuracy", "gate", "profiles"):
            table.add_column(column)
        for a in artifacts:
            gate = "-" if a["gate"] is None else a["gate"]["status"] + "".join(f"\n{r}" for r in a["gate"]["reasons"])
            table.add_row(a["file"], a["runtime"], a["precision"], str(a["accuracy"]), gate, ",".join(a["profiles"]))
        Console().print(table)
        for note in notes:
            if note["status"] not in ("built",):
                console.print(f"{note['profile']}: {note['target']} {note['status']}: {note['message']}")

    emit(as_json, payload, human)
    if payload["package_id"] is None:
        raise typer.Exit(1)


# --- model -------------------------------------------------------------------
@model_app.command("list")
def model_list(as_json: JsonOption = False) -> None:
    """List registered model versions with status and test accuracy."""
    engine, _ = local_context()
    with Session(engine) as session:
        rows = [{"version": m.version, "name": m.name, "status": m.status, "dataset_id": m.dataset_id,
                 "accuracy": m.metrics.get("accuracy"), "code_version": m.code_version,
                 "created_at": m.created_at.isoformat()} for m in crud.list_model_versions(session)]

    def human() -> None:
        if not rows:
            console.print("models: none yet. Train one: `edgefleet data synth DIR`, `edgefleet data ingest DIR`, "
                          "`edgefleet train --dataset DATASET_ID`; or bring your own with `edgefleet model import`.",
                          highlight=False)
            return
        table = new_table("models")
        for column in ("version", "status", "accuracy", "dataset", "created"):
            table.add_column(column)
        for r in rows:
            table.add_row(r["version"], r["status"], str(r["accuracy"]), r["dataset_id"], cell(r["created_at"]))
        Console().print(table)

    emit(as_json, rows, human)


@model_app.command("show")
def model_show(version: str, as_json: JsonOption = False) -> None:
    """Lineage of one model: dataset, code version, parameters, environment, metrics, gate, builds."""
    # Imported here: it pulls in torch, which the API and CLI keep out of start-up.
    from cloud.pipeline.service import describe_model

    engine, _ = local_context()
    with user_errors(), Session(engine) as session:
        described = describe_model(session, version)
    def human() -> None:
        Console().print_json(json.dumps(described, default=str))
        if described.get("detection_quality"):
            print_detection_quality(described["detection_quality"])

    emit(as_json, described, human)


def _figure(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _verdict(passed: bool | None) -> str:
    return "not gated" if passed is None else ("pass" if passed else "fail")


def print_detection_quality(quality: dict[str, Any]) -> None:
    """The detector's mAP overall, per class, per slice (against the gate) and per build artifact."""
    out = Console()
    gate = f" (gate ≥ {_figure(quality['min_map_50'])}: {_verdict(quality['passed'])})" \
        if quality.get("min_map_50") is not None else ""
    out.print(f"detection: mAP@0.5 {_figure(quality['map_50'])}{gate}, mAP@0.5:0.95 {_figure(quality['map_50_95'])}, "
              f"gate {quality.get('gate_status') or 'not recorded'}", highlight=False)
    classes = new_table("mAP per class")
    for column in ("class", "AP@0.5", "AP@0.5:0.95"):
        classes.add_column(column)
    for c in quality["per_class"]:
        classes.add_row(c["label"], _figure(c["ap_50"]), _figure(c["ap_50_95"]))
    out.print(classes)
    slices = new_table("mAP per slice")
    for column in ("slice", "images", "mAP@0.5", "mAP@0.5:0.95", "gate minimum", "result"):
        slices.add_column(column)
    for s in quality["per_slice"]:
        slices.add_row(s["slice"], str(s["images"]), _figure(s["map_50"]), _figure(s["map_50_95"]),
                       _figure(s["min_map_50"]), _verdict(s["passed"]))
    out.print(slices)
    if quality["artifacts"]:
        artifacts = new_table("build artifacts")
        for column in ("build", "file", "runtime", "precision", "mAP@0.5", "mAP@0.5:0.95", "INT8 drop pp", "accepted"):
            artifacts.add_column(column)
        for a in quality["artifacts"]:
            artifacts.add_row(str(a["build_id"]), str(a["file"]), str(a["runtime"]), str(a["precision"]),
                              _figure(a["map_50"]), _figure(a["map_50_95"]), _figure(a["map_50_drop_pp"], 2),
                              "-" if a["accepted"] is None else ("yes" if a["accepted"] else "no"))
        out.print(artifacts)


@model_app.command("import")
def model_import(
    model_file: Annotated[Path, typer.Argument(help="ONNX (.onnx), LiteRT (.tflite) or OpenVINO IR (.xml, .bin beside it)")],
    name: Annotated[str, typer.Option(help="model name in the registry")],
    labels: Annotated[Path | None, typer.Option(help="labels file: one per line, or a JSON list "
                                                     "(default: the model's metadata 'names')")] = None,
    spec: Annotated[Path | None, typer.Option(help="preprocessing spec JSON (agent.contract.PreprocessSpec); "
                                                   "default: RGB, pixels / 255, letterbox 114 for detectors")] = None,
    task: Annotated[str | None, typer.Option(help="classification | detection (default: inferred)")] = None,
    decoder: Annotated[str | None, typer.Option(help="detection output layout: yolo_raw | nms_in_graph | yolov5 "
                                                     "(default: inferred from the output shape)")] = None,
    activation: Annotated[str | None, typer.Option(help="logits | probabilities: whether the outputs are already "
                                                        "probabilities (default: inferred and checked)")] = None,
    input_size: Annotated[str | None, typer.Option(help="model input WIDTHxHEIGHT or one number for square "
                                                        "(default: metadata 'imgsz', else the model's own)")] = None,
    score_threshold: Annotated[float | None, typer.Option(min=0, max=1, help="detection score threshold")] = None,
    iou_threshold: Annotated[float | None, typer.Option(min=0.01, max=1, help="detection NMS IoU threshold")] = None,
    max_detections: Annotated[int | None, typer.Option(min=1, max=1000, help="detections kept per frame")] = None,
    dataset: Annotated[str | None, typer.Option(help="labelled dataset id: evaluate and gate a classifier, and "
                                                     "build the package's drift reference")] = None,
    profile: ProfileOption = None,
    as_json: JsonOption = False,
) -> None:
    """Import an external classifier or detector and package it as it is, for every profile that runs its format.

    What the model is (task, decoder, activation, labels, input size) comes from the flags,
    else the exporter's metadata (Ultralytics ONNX), else its output shape, checked on
    reference images through the device runtime. When only a flag can settle it, the
    error names that flag. A validated ONNX classifier is also built for --profile (INT8, OpenVINO).
    """
    # Imported here: it pulls in torch, which the API and CLI keep out of start-up.
    from cloud.pipeline.byo.importer import ImportDeclaration, parse_input_size
    from cloud.pipeline.service import build_model, import_package, read_labels, read_spec

    engine, paths = local_context()
    with user_errors():
        declared = ImportDeclaration.checked(
            labels=read_labels(labels) if labels else None, spec=read_spec(spec) if spec else None, task=task,
            decoder=decoder, activation=activation,
            input_size=parse_input_size(input_size) if input_size else None, score_threshold=score_threshold,
            iou_threshold=iou_threshold, max_detections=max_detections)
        result = import_package(engine, paths, model_path=model_file, name=name, declared=declared,
                                dataset_id=dataset, profiles=profile or [])
        built = None
        if profile and result.buildable:
            built = build_model(engine, paths, version=result.outcome.model_version, profiles=profile)
    payload = result.as_dict()
    if built is not None:
        payload["build"] = {"package_id": built.package_id, "artifacts": [a.summary() for a in built.outcome.artifacts]}

    def human() -> None:
        console.print(f"{payload['model_version']}: {payload['status']}, {payload['task']}"
                      f"{' (' + payload['decoder'] + ')' if payload['decoder'] else ''}, {payload['format']} "
                      f"{payload['precision']}, outputs {payload['activation']} ({payload['activation_reason']})",
                      highlight=False)
        console.print(f"package {payload['package_id']} for {', '.join(payload['hardware_profiles'])}", highlight=False)
        for note in [*payload["reasons"], *payload["notes"], payload["drift_reference"]]:
            console.print(f"  - {note}", highlight=False)

    emit(as_json, payload, human)


@model_app.command("promote")
def model_promote(version: str, server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None) -> None:
    """Make a validated model the production model: later candidates must not be worse than it.

    With an API token (--token or EDGEFLEET_TOKEN) it goes through the control plane, and the
    audit log names the token; without one it works on the local database as ``local:<os user>``.
    """
    if token:
        result = call(server, token, "POST", f"/api/v1/models/{version}/promote")
        console.print(f"{result['model_version']} is now {result['status']}")
        return
    # Imported here: it pulls in torch, which the API and CLI keep out of start-up.
    from cloud.pipeline.service import promote

    engine, _ = local_context()
    with user_errors():
        model = promote(engine, version, actor=local_actor())
    console.print(f"{model.version} is now production")
