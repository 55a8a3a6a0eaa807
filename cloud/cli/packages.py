"""``edgefleet package ...``: built packages (over HTTP)."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from cloud.cli.client import (
    DEFAULT_SERVER,
    JsonOpt,
    ServerOpt,
    TokenOpt,
    call,
    cell,
    console,
    emit_json,
    print_listing,
)

# --- packages ----------------------------------------------------------------
package_app = typer.Typer(help="Built packages (what a deployment installs).", no_args_is_help=True)


@package_app.command("list")
def package_list(server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None, json_out: JsonOpt = False) -> None:
    """List packages, newest first."""
    packages: list[dict[str, Any]] = call(server, token, "GET", "/api/v1/packages")
    if json_out:
        emit_json(packages)
        return
    print_listing(f"packages ({len(packages)})", ["package", "model version", "profiles", "size", "created"],
                  [[p["id"], p["model_version"], ", ".join(p["hardware_profiles"]),
                    f"{p['size_bytes'] / 1024:.0f} KiB", cell(p["created_at"])] for p in packages],
                  empty_hint="Build one from a validated model: `edgefleet build VERSION --profile PROFILE`.")


@package_app.command("show")
def package_show(
    package_id: Annotated[str, typer.Argument(help="package id")],
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """One package."""
    package = call(server, token, "GET", f"/api/v1/packages/{package_id}")
    if json_out:
        emit_json(package)
        return
    grid = Table.grid(padding=(0, 2))
    for key, value in package.items():
        grid.add_row(f"[bold]{key}[/]", cell(", ".join(value) if isinstance(value, list) else value))
    console.print(grid)


@package_app.command("withdraw")
def package_withdraw(
    package_id: Annotated[str, typer.Argument(help="package id")],
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Withdraw a package from the signed TUF targets (admin): devices refuse it from then on."""
    result = call(server, token, "POST", f"/api/v1/packages/{package_id}/withdraw")
    if json_out:
        emit_json(result)
        return
    console.print(f"withdrew {package_id}: {result['targets_removed']} target(s) removed, targets re-signed",
                  highlight=False)
