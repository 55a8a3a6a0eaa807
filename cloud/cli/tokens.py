"""``edgefleet token ...``: API and enrollment tokens."""

from __future__ import annotations

import shlex
from typing import Annotated, Any

import typer
from sqlmodel import Session

from cloud.cli.client import (
    DEFAULT_SERVER,
    ApiError,
    Exit,
    JsonOpt,
    OptionalServerOpt,
    ServerOpt,
    TokenOpt,
    call,
    cell,
    client_from,
    console,
    emit_json,
    err_console,
    fail,
    table,
)
from cloud.cli.keys import fleet_security
from cloud.cli.local import local_actor
from cloud.governance import audit
from cloud.security.tables import Role
from cloud.security.tokens import create_api_token
from cloud.timefmt import format_utc

token_app = typer.Typer(help="API and enrollment tokens.", no_args_is_help=True)


@token_app.command("list")
def token_list(server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None, json_out: JsonOpt = False) -> None:
    """API tokens (never their secrets): who, which role, revoked or not (admin)."""
    tokens: list[dict[str, Any]] = call(server, token, "GET", "/api/v1/tokens")
    if json_out:
        emit_json(tokens)
        return
    console.print(table(f"API tokens ({len(tokens)})", ["id", "name", "role", "device", "created", "expires",
                                                             "revoked"],
                         ([t["id"], t["name"], t["role"], cell(t.get("device_id")), cell(t["created_at"]),
                           cell(t.get("expires_at")), cell(t.get("revoked_at"))] for t in tokens)))


@token_app.command("revoke")
def token_revoke(
    token_id: Annotated[str, typer.Argument(help="token id (from `edgefleet token list`), not the secret")],
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
) -> None:
    """Revoke an API token at once: the next request with it gets 401, the dashboard logs it out (admin)."""
    client = client_from(server, token)
    try:
        client.request("DELETE", f"/api/v1/tokens/{token_id}")
    except ApiError as exc:
        fail(exc.detail, exc.exit_code)
    finally:
        client.close()
    console.print(f"revoked token {token_id}", highlight=False)


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Option(help="who or what uses the token")],
    role: Annotated[str, typer.Option(help="viewer, operator or admin")] = "viewer",
    ttl: Annotated[int | None, typer.Option(min=1, help="seconds until it expires; default EDGEFLEET_API_TOKEN_TTL_S "
                                                        "(90 days)")] = None,
    server: OptionalServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """Create an API token. It is printed once, stored only as a hash, and expires."""
    if role not in ("viewer", "operator", "admin"):
        console.print("[red]error:[/] --role must be viewer, operator or admin")
        raise typer.Exit(2)
    if server is not None:
        body: dict[str, object] = {"name": name, "role": role, **({"ttl_s": ttl} if ttl else {})}
        print(call(server, token, "POST", "/api/v1/tokens", body)["token"])
        return
    security = fleet_security()
    with Session(security.engine) as session:
        # Only the secret on the output (scripts capture it); `edgefleet token list` shows the expiry.
        secret, row = create_api_token(session, name=name, role=Role(role),
                                       ttl_s=ttl or security.settings.api_token_ttl_s)
        audit.record(session, actor=local_actor(), action="token.created", subject_type="api_token",
                     subject_id=row.id, details={"name": name, "role": role})
        session.commit()
    security.engine.dispose()
    print(secret)


@token_app.command("enroll")
def token_enroll(
    device_id: str,
    profile: Annotated[str, typer.Option(help="the device's hardware profile")] = "x86-64-avx2",
    server: OptionalServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """Create a one-time enrollment token and print the command to run on the device."""
    if server is not None:
        answer = call(server, token, "POST", "/api/v1/enrollment-tokens",
                      {"device_id": device_id, "hardware_profile": profile})
        secret, expires_at = str(answer["token"]), format_utc(answer["expires_at"], missing=str(answer["expires_at"]))
        # The server's public URL when it has one; otherwise the address we reached it at.
        device_server = str(answer.get("server_url") or server).rstrip("/")
    else:
        security = fleet_security()
        try:
            with Session(security.engine) as session:
                secret, expires = security.create_enrollment_token(session, device_id, hardware_profile=profile)
                audit.record(session, actor=local_actor(), action="enrollment_token.created", subject_type="device",
                             subject_id=device_id, details={"hardware_profile": profile,
                                                            "expires_at": expires.isoformat()})
                session.commit()
        except ValueError as exc:
            fail(str(exc), Exit.BAD_INPUT)
        finally:
            security.engine.dispose()
        expires_at = format_utc(expires)
        device_server = security.settings.base_url()
    # The hint on stderr, so stdout is exactly the command: `$(edgefleet token enroll cam-01)` runs it.
    err_console.print(f"valid until {expires_at}; on the device run:", style="dim", highlight=False)
    print(f"edgefleet-agent enroll --server {shlex.quote(device_server)} --token {shlex.quote(secret)} "
          "--config agent.yaml")
