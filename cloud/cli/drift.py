"""``edgefleet drift ...``: drift alerts with their evidence, the fleet test, package references."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from sqlmodel import Session

from cloud.cli.client import (
    DEFAULT_SERVER,
    JsonOpt,
    ServerOpt,
    TokenOpt,
    call,
    cell,
    console,
    emit_json,
    table,
)
from cloud.cli.drift_baseline import baseline_app
from cloud.cli.local import local_actor, local_settings
from cloud.core.db import make_engine, migrate
from cloud.governance.retrain import repackage_with_reference
from cloud.pipeline.data.dataset import decode_image, scan_imagefolder

drift_app = typer.Typer(help="Drift alerts with their evidence, and the fleet test.", no_args_is_help=True)
drift_app.add_typer(baseline_app, name="baseline")


@drift_app.command("alerts")
def drift_alerts(state: Annotated[str | None, typer.Option(help="open or cleared")] = "open",
                 device: Annotated[str | None, typer.Option(help="only this device")] = None,
                 server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None, json_out: JsonOpt = False) -> None:
    """Drift alerts (open ones by default) and the features that drove them."""
    alerts: list[dict[str, Any]] = call(server, token, "GET", "/api/v1/drift/alerts", state=state, device_id=device)
    if json_out:
        emit_json(alerts)
        return
    rows = []
    for alert in alerts:
        features = alert["evidence"].get("features", [])[:3]
        worst = ", ".join(f"{f['name']} (p={f['p']:.1e}, PSI {f['psi']:.2f})" for f in features)
        rows.append([alert["id"], alert["scope"], cell(alert["device_id"]), cell(alert["model_version"]),
                     alert["state"], cell(alert["score"], ".1f"), cell(alert["opened_at"]), worst,
                     cell(alert["proposal_id"])])
    console.print(table("drift alerts", ["id", "scope", "device", "model", "state", "score", "opened", "evidence",
                                          "proposal"], rows))


@drift_app.command("devices")
def drift_devices(server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None, json_out: JsonOpt = False) -> None:
    """Each device's drift state (ok, alert, no data or baseline pending) and each of its cameras' beneath it."""
    rows: list[dict[str, Any]] = call(server, token, "GET", "/api/v1/drift/devices")
    if json_out:
        emit_json(rows)
        return

    def line(name: str, r: dict[str, Any]) -> list[str]:
        return [name, r["state"], str(r["open_alerts"]), ", ".join(r["baseline"]) or "-", cell(r["last_window_at"]),
                cell(r["last_window_score"], ".1f")]

    lines = []
    for r in rows:
        lines.append(line(r["device_id"], r))
        # Each camera's scene is its own population: its test, alert and baseline are its own.
        lines.extend(line(f"{r['device_id']} / {c['camera']}", c) for c in r.get("cameras", []))
    console.print(table("drift by device and camera", ["device / camera", "state", "open alerts", "baseline",
                                                       "last window", "last score"], lines))


@drift_app.command("fleet")
def drift_fleet(package_id: str, minutes: float = 60.0, server: ServerOpt = DEFAULT_SERVER,
                token: TokenOpt = None, json_out: JsonOpt = False) -> None:
    """Merge the fleet's recent windows for a package and test them against its reference."""
    result: dict[str, Any] = call(server, token, "GET", f"/api/v1/drift/fleet/{package_id}", minutes=minutes)
    if json_out:
        emit_json(result)
        return
    console.print(f"package {package_id}: {len(result['devices'])} devices, {result['windows']} windows, "
                  f"{result['frames']} frames; window p={result['window_p']:.2e} score {result['score']} "
                  f"drifted={'yes' if result['drifted'] else 'no'}")
    console.print(table("features", ["feature", "p", "p (Holm)", "PSI"],
                         [[f["name"], f"{f['p']:.2e}", f"{f['p_holm']:.2e}", f"{f['psi']:.3f}"]
                          for f in result.get("features", [])]))


@drift_app.command("reference")
def drift_reference(
    package_id: Annotated[str, typer.Argument(help="the package to add a drift reference to")],
    data: Annotated[str, typer.Option(help="ImageFolder directory of images the model should see in service")],
    split: Annotated[str, typer.Option(help="which split of --data to use (val keeps training images out)")] = "val",
    window_frames: int = 300,
) -> None:
    """Build a drift reference from images and repackage the release with it (runs locally, like train)."""
    from pathlib import Path

    settings = local_settings()
    migrate(settings.resolved_database_url)
    dataset = scan_imagefolder(Path(data))
    chosen = dataset.split(split) if split in ("train", "val", "test") else dataset.samples
    images = [image for image in (decode_image(s.path) for s in chosen) if image is not None]
    engine = make_engine(settings.resolved_database_url)
    try:
        with Session(engine) as session:
            package = repackage_with_reference(session, package_id, images, packages_dir=settings.packages_dir,
                                               window_frames=window_frames, source=f"{data} ({split})",
                                               actor=local_actor())
            # Read while the session is open: after it closes the row is detached.
            new_id, model_version = package.id, package.model_version
    except (LookupError, ValueError) as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None
    finally:
        engine.dispose()
    console.print(f"package {new_id}: {model_version} with a drift reference of {len(images)} images",
                  highlight=False)
