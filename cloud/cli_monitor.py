"""``edgefleet drift|samples|governance`` and ``edgefleet model lineage``: over the HTTP API.

Uses the operator CLI's client and options (``--server``/``EDGEFLEET_SERVER``,
``--token``/``EDGEFLEET_TOKEN``, ``--json``).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console

from cloud.cli_ops import DEFAULT_SERVER, JsonOpt, ServerOpt, TokenOpt, _call, _cell, _table, emit_json
from cloud.cli_pipeline import model_app
from cloud.core.config import Settings
from cloud.core.db import make_engine, migrate
from cloud.governance.retrain import repackage_with_reference
from cloud.pipeline.data.dataset import decode_image, scan_imagefolder

console = Console()
drift_app = typer.Typer(help="Drift alerts with their evidence, and the fleet test.", no_args_is_help=True)
samples_app = typer.Typer(help="Captured samples and labelling.", no_args_is_help=True)
governance_app = typer.Typer(help="Retraining and rollout proposals, approvals, the audit log.",
                             no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add the drift, samples and governance groups, and ``model lineage``."""
    app.add_typer(drift_app, name="drift")
    app.add_typer(samples_app, name="samples")
    app.add_typer(governance_app, name="governance")

    model_app.command("lineage")(model_lineage)


@drift_app.command("alerts")
def drift_alerts(state: Annotated[str | None, typer.Option(help="open or cleared")] = "open",
                 device: Annotated[str | None, typer.Option(help="only this device")] = None,
                 server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None, json_out: JsonOpt = False) -> None:
    """Drift alerts (open ones by default) and the features that drove them."""
    alerts: list[dict[str, Any]] = _call(server, token, "GET", "/api/v1/drift/alerts", state=state, device_id=device)
    if json_out:
        emit_json(alerts)
        return
    rows = []
    for alert in alerts:
        features = alert["evidence"].get("features", [])[:3]
        worst = ", ".join(f"{f['name']} (p={f['p']:.1e}, PSI {f['psi']:.2f})" for f in features)
        rows.append([alert["id"], alert["scope"], _cell(alert["device_id"]), _cell(alert["model_version"]),
                     alert["state"], _cell(alert["score"], ".1f"), str(alert["opened_at"])[:19], worst,
                     _cell(alert["proposal_id"])])
    console.print(_table("drift alerts", ["id", "scope", "device", "model", "state", "score", "opened", "evidence",
                                          "proposal"], rows))


@drift_app.command("fleet")
def drift_fleet(package_id: str, minutes: float = 60.0, server: ServerOpt = DEFAULT_SERVER,
                token: TokenOpt = None, json_out: JsonOpt = False) -> None:
    """Merge the fleet's recent windows for a package and test them against its reference."""
    result: dict[str, Any] = _call(server, token, "GET", f"/api/v1/drift/fleet/{package_id}", minutes=minutes)
    if json_out:
        emit_json(result)
        return
    console.print(f"package {package_id}: {len(result['devices'])} devices, {result['windows']} windows, "
                  f"{result['frames']} frames; window p={result['window_p']:.2e} score {result['score']} "
                  f"drifted={'yes' if result['drifted'] else 'no'}")
    console.print(_table("features", ["feature", "p", "p (Holm)", "PSI"],
                         [[f["name"], f"{f['p']:.2e}", f"{f['p_holm']:.2e}", f"{f['psi']:.3f}"]
                          for f in result.get("features", [])]))


@samples_app.command("list")
def samples_list(status: str = "unlabelled", device: Annotated[list[str] | None, typer.Option()] = None,
                 limit: int = 100, server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None,
                 json_out: JsonOpt = False) -> None:
    """Samples awaiting a label (or any ``--status``)."""
    samples: list[dict[str, Any]] = _call(server, token, "GET", "/api/v1/samples", status=status, device_id=device,
                                          limit=limit)
    if json_out:
        emit_json(samples)
        return
    console.print(_table("samples", ["sample", "device", "sampler", "reason", "predicted", "conf", "status", "label"],
                         [[s["sample_id"], s["device_id"], s["sampler"], s["reason"], _cell(s["predicted_label"]),
                           _cell(s["confidence"], ".2f"), s["status"], _cell(s["label"])] for s in samples]))


@governance_app.command("proposals")
def proposals(server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None, json_out: JsonOpt = False) -> None:
    """Retraining proposals opened by drift alerts."""
    rows: list[dict[str, Any]] = _call(server, token, "GET", "/api/v1/governance/proposals")
    if json_out:
        emit_json(rows)
        return
    console.print(_table("retraining proposals", ["id", "state", "base", "devices", "new model", "validation"],
                         [[p["id"], p["state"], _cell(p["base_model_version"]), ", ".join(p["device_ids"]),
                           _cell(p["new_model_version"]), _validation(p["validation"])] for p in rows]))


def _validation(numbers: dict[str, Any]) -> str:
    if not numbers:
        return "-"
    return (f"old test {numbers.get('old_test_accuracy_before')}→{numbers.get('old_test_accuracy_after')}, "
            f"drift {numbers.get('drift_accuracy_before')}→{numbers.get('drift_accuracy_after')}")


@governance_app.command("retrain")
def retrain(proposal_id: str, epochs: int = 6, server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None) -> None:
    """Retrain now: new dataset version, training, validation and (on success) a rollout proposal."""
    result = _call(server, token, "POST", f"/api/v1/governance/proposals/{proposal_id}/retrain?epochs={epochs}")
    console.print(f"proposal {result['id']}: {result['state']}; {_validation(result['validation'])}")


@governance_app.command("approve")
def approve(rollout_proposal_id: str, server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None) -> None:
    """Approve a pending canary rollout proposal (starts the rollout)."""
    result = _call(server, token, "POST", f"/api/v1/governance/rollout-proposals/{rollout_proposal_id}/approve")
    console.print(f"rollout proposal {result['id']}: {result['state']} (rollout {result['rollout_id']})")


@governance_app.command("audit")
def audit(subject: str | None = None, limit: int = 100, server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None,
          json_out: JsonOpt = False) -> None:
    """The audit log: who or what did each step, when."""
    events: list[dict[str, Any]] = _call(server, token, "GET", "/api/v1/governance/audit", subject_id=subject,
                                         limit=limit)
    if json_out:
        emit_json(events)
        return
    console.print(_table("audit", ["at", "actor", "action", "subject"],
                         [[str(e["at"])[:19], e["actor"], e["action"], e["subject_id"]] for e in events]))


def model_lineage(version: str, server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None,
                  json_out: JsonOpt = False) -> None:
    """The chain from data to devices: datasets (and the samples they added), packages, rollouts, devices."""
    result: dict[str, Any] = _call(server, token, "GET", f"/api/v1/governance/lineage/{version}")
    if json_out:
        emit_json(result)
        return
    console.print(f"[bold]{result['model_name']} {result['model_version']}[/] created {str(result['created_at'])[:19]}"
                  f" (code {_cell(result['code_version'])})")
    for dataset in result["datasets"]:
        added = ""
        if dataset["origin"] == "retraining":
            devices = ", ".join(f"{d}: {n}" for d, n in dataset["samples_by_device"].items())
            added = f" + {dataset['added_samples']} samples ({devices}) labelled by {', '.join(dataset['labelled_by'])}"
        console.print(f"  data    {dataset['dataset_id']} ({dataset['origin']}){added}")
    for proposal in result["retraining_proposals"]:
        console.print(f"  trigger alerts {', '.join(proposal['alerts'])} on {', '.join(proposal['devices'])}; "
                      f"validation {_validation(proposal['validation'])}")
    console.print(f"  package {', '.join(result['packages']) or '-'}")
    for rollout in result["rollout_proposals"]:
        console.print(f"  rollout {rollout['id']} {rollout['state']} by {_cell(rollout['decided_by'])} → "
                      f"{', '.join(rollout['devices'])} (rollout {_cell(rollout['rollout_id'])})")
    console.print(f"  devices running it: {', '.join(result['devices_running']) or '-'}")
    for event in result["audit"]:
        console.print(f"    {str(event['at'])[:19]} {event['actor']}: {event['action']} {event['subject']}")


@drift_app.command("reference")
def drift_reference(
    package_id: Annotated[str, typer.Argument(help="the package to add a drift reference to")],
    data: Annotated[str, typer.Option(help="ImageFolder directory of images the model should see in service")],
    split: Annotated[str, typer.Option(help="which split of --data to use (val keeps training images out)")] = "val",
    window_frames: int = 300,
) -> None:
    """Build a drift reference from images and repackage the release with it (runs locally, like train)."""
    from pathlib import Path

    from sqlmodel import Session


    settings = Settings()
    migrate(settings.resolved_database_url)
    dataset = scan_imagefolder(Path(data))
    chosen = dataset.split(split) if split in ("train", "val", "test") else dataset.samples
    images = [image for image in (decode_image(s.path) for s in chosen) if image is not None]
    try:
        with Session(make_engine(settings.resolved_database_url)) as session:
            package = repackage_with_reference(session, package_id, images, packages_dir=settings.packages_dir,
                                               window_frames=window_frames, source=f"{data} ({split})")
    except (LookupError, ValueError) as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None
    console.print(f"package {package.id}: {package.model_version} with a drift reference of {len(images)} images")
