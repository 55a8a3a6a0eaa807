"""``edgefleet keys ...``: TUF and director keys, device certificates (on the control plane's data directory)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from sqlmodel import Session

from cloud.cli.client import (
    JsonOpt,
    console,
    emit_json,
    table,
)
from cloud.cli.local import local_actor, local_settings
from cloud.core.db import make_engine, migrate
from cloud.governance import audit
from cloud.security import FleetSecurity
from cloud.security.tuf_repo import OfflineKeyRequired, sign_metadata_offline

keys_app = typer.Typer(help="TUF and director keys, device certificates.", no_args_is_help=True)


OfflineKeysOpt = Annotated[Path | None, typer.Option(
    "--offline-keys", help="directory holding the root and targets keys (a medium attached for this command)")]



def fleet_security(offline_keys_dir: Path | None = None) -> FleetSecurity:
    settings = local_settings()
    migrate(settings.resolved_database_url)
    security = FleetSecurity(settings, make_engine(settings.resolved_database_url), offline_keys_dir=offline_keys_dir)
    security.initialise()
    return security


def _audit(security: FleetSecurity, action: str, subject_id: str, details: dict[str, Any] | None = None) -> None:
    with Session(security.engine) as session:
        audit.record(session, actor=local_actor(), action=action, subject_type="keys", subject_id=subject_id,
                     details=details)
        session.commit()


def _refused(exc: Exception) -> typer.Exit:
    console.print(f"[red]error:[/] {exc}", highlight=False)
    return typer.Exit(2)


@keys_app.command("init")
def keys_init(offline_keys: OfflineKeysOpt = None) -> None:
    """Create any missing key: TUF roles (root 2-of-3 in production), fleet CAs, director key.

    With --offline-keys the root and targets keys are created there, never on this host.
    """
    security = fleet_security(offline_keys)
    console.print(f"keys ready under {security.settings.security_dir}")
    console.print_json(data=security.status())


@keys_app.command("status")
def keys_status(json_out: JsonOpt = False) -> None:
    """Root version, keys and thresholds per role, revoked certificates."""
    status = fleet_security().status()
    if json_out:
        emit_json(status)
        return
    console.print(f"TUF root version {status['tuf_root_version']}; "
                  f"{status['revoked_serials']} revoked device certificate(s)", highlight=False)
    console.print(table("TUF roles", ["role", "keys", "threshold"],
                         ([name, str(role["keys"]), str(role["threshold"])]
                          for name, role in sorted(status["tuf_roles"].items()))))


@keys_app.command("rotate")
def keys_rotate(
    role: Annotated[str, typer.Argument(help="root, targets, snapshot or timestamp")],
    keys: Annotated[int | None, typer.Option(min=1, help="number of new keys (default: as many as now)")] = None,
    threshold: Annotated[int | None, typer.Option(min=1, help="new threshold (default: unchanged)")] = None,
    offline_keys: OfflineKeysOpt = None,
) -> None:
    """Replace a role's keys; the new root is signed by the old and the new root keys."""
    security = fleet_security(offline_keys)
    try:
        root = security.tuf.rotate_keys(role, keys=keys, threshold=threshold)
    except (ValueError, OfflineKeyRequired) as exc:
        raise _refused(exc) from None
    _audit(security, "keys.rotated", role, {"root_version": root.version, "keys": len(root.roles[role].keyids),
                                            "threshold": root.roles[role].threshold})
    console.print(f"rotated {role}: root is now version {root.version}, "
                  f"{len(root.roles[role].keyids)} keys, threshold {root.roles[role].threshold}")


@keys_app.command("rotate-director")
def keys_rotate_director(offline_keys: OfflineKeysOpt = None) -> None:
    """Replace the director key through the root of trust: devices stay enrolled.

    The new public key is published in a new root version (signed by the root keys; attach
    them with --offline-keys when they are offline); devices take it on their next refresh.
    """
    security = fleet_security(offline_keys)
    try:
        security.rotate_director()
    except OfflineKeyRequired as exc:
        raise _refused(exc) from None
    _audit(security, "keys.director_rotated", "director")
    console.print("director key rotated; public key:")
    console.print(security.director.public_pem().decode())


@keys_app.command("offline")
def keys_offline(
    to: Annotated[Path, typer.Option(help="directory on the offline medium to move the root and targets keys to")],
) -> None:
    """Move the root and targets private keys off this host; it keeps snapshot, timestamp and director keys."""
    security = fleet_security()
    moved = security.tuf.move_offline(to)
    _audit(security, "keys.moved_offline", "root,targets", {"keys": len(moved)})
    console.print(f"moved {len(moved)} key(s) to {to}; detach it. Sign releases with "
                  "`edgefleet keys sign-targets --offline-keys DIR` (or export-targets / sign / import-targets)",
                  highlight=False)


@keys_app.command("sign-targets")
def keys_sign_targets(offline_keys: Annotated[Path, typer.Option("--offline-keys", help="the attached key directory")]) -> None:
    """Sign the packages waiting for the offline targets key, and publish them."""
    security = fleet_security(offline_keys)
    waiting = security.tuf.staged_packages()
    try:
        version = security.tuf.sign_staged_targets()
    except (ValueError, OfflineKeyRequired) as exc:
        raise _refused(exc) from None
    _audit(security, "keys.targets_signed", "targets", {"version": version, "packages": waiting})
    console.print(f"signed targets version {version}: {', '.join(waiting) or 'no new package'}", highlight=False)


@keys_app.command("export-targets")
def keys_export_targets(
    out: Annotated[Path, typer.Argument(help="directory to write targets.unsigned.json and root.json to")],
) -> None:
    """Write the staged targets and the current root, to carry to the machine that holds the keys."""
    security = fleet_security()
    staged = security.tuf.staged_targets_bytes()
    if staged is None:
        raise _refused(ValueError("no targets are waiting for a signature"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "targets.unsigned.json").write_bytes(staged)
    (out / "root.json").write_bytes(security.tuf.trusted_root_bytes())
    console.print(f"wrote {out}/targets.unsigned.json and root.json; on the key machine run "
                  f"`edgefleet keys sign {out} --keys DIR`", highlight=False)


@keys_app.command("sign")
def keys_sign(
    directory: Annotated[Path, typer.Argument(help="what export-targets wrote")],
    keys: Annotated[Path, typer.Option(help="the offline key directory")],
) -> None:
    """Sign exported targets with offline keys. Needs no control plane: run it where the keys are."""
    try:
        signed = sign_metadata_offline((directory / "targets.unsigned.json").read_bytes(),
                                       (directory / "root.json").read_bytes(), keys)
    except (OSError, ValueError) as exc:
        raise _refused(exc) from None
    (directory / "targets.signed.json").write_bytes(signed)
    console.print(f"wrote {directory}/targets.signed.json; carry it back and run `edgefleet keys import-targets`",
                  highlight=False)


@keys_app.command("import-targets")
def keys_import_targets(signed: Annotated[Path, typer.Argument(help="targets.signed.json from `keys sign`")]) -> None:
    """Publish targets signed on the key machine (checked against the root before anything changes)."""
    security = fleet_security()
    try:
        version = security.tuf.import_signed_targets(signed.read_bytes())
    except (OSError, ValueError) as exc:
        raise _refused(exc) from None
    _audit(security, "keys.targets_imported", "targets", {"version": version})
    console.print(f"published targets version {version}")


@keys_app.command("revoke-device")
def keys_revoke_device(device_id: str) -> None:
    """Take every credential of a device (certificates, API tokens, pending enrollment) and rewrite the CRL."""
    security = fleet_security()
    with Session(security.engine) as session:
        serials = security.revoke_device(session, device_id, revoked_by=local_actor())
    _audit(security, "device.revoked", device_id, {"revoked_serials": [str(s) for s in serials]})
    console.print(f"revoked {len(serials)} certificate(s) of {device_id}; CRL: {security.ca.crl_file}")
