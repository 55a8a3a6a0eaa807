"""The CLI's client side: the HTTP API client, exit codes shared by every command, and output helpers."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from enum import IntEnum
from typing import Annotated, Any, NoReturn

import httpx
import typer
from rich.console import Console
from rich.table import Table

from cloud.timefmt import format_utc, looks_like_timestamp

__all__ = ["DEFAULT_SERVER", "ApiClient", "ApiError", "Exit", "JsonOpt", "OptionalServerOpt", "ServerOpt", "TokenOpt", "call", "cell",
           "client_from", "console", "emit_json", "err_console", "fail", "new_table", "online_cell", "print_listing", "table"]

DEFAULT_SERVER = "http://127.0.0.1:8000"


console = Console()


# Errors go to stderr so ``--json`` output on stdout stays parseable even on failure.
err_console = Console(stderr=True)


class Exit(IntEnum):
    """Exit codes that mean the same thing for every ``edgefleet`` command."""

    OK = 0
    FAILED = 1  # the command ran, and what it did or watched failed (e.g. a deployment failed)
    BAD_INPUT = 2  # usage error, or the server refused the input (400, 409, 422)
    NOT_FOUND = 3  # the named resource does not exist (404)
    AUTH = 4  # no token, an unknown token, or a role too low (401, 403)
    UNAVAILABLE = 5  # the server cannot be reached or failed (5xx)
    TIMEOUT = 6  # waited for a final state longer than --timeout


class ApiError(Exception):
    """An HTTP error from the control plane, or no answer at all (``status`` 0)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail

    @property
    def exit_code(self) -> Exit:
        if self.status == 0 or self.status >= 500:
            return Exit.UNAVAILABLE
        if self.status in (401, 403):
            return Exit.AUTH
        if self.status == 404:
            return Exit.NOT_FOUND
        return Exit.BAD_INPUT


class ApiClient:
    """A thin JSON client for ``/api/v1`` that turns every failure into :class:`ApiError`."""

    def __init__(self, server: str, token: str | None, *, timeout_s: float = 15.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self.server = server.rstrip("/")
        self._http = httpx.Client(base_url=self.server, headers=headers, timeout=timeout_s, transport=transport)

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """The response of a request, or ``ApiError`` (unreachable, or a 4xx/5xx with its detail)."""
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ApiError(0, f"cannot reach the control plane at {self.server}: {exc}") from None
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except (ValueError, AttributeError):
                detail = response.text
            raise ApiError(response.status_code, f"{method} {path}: HTTP {response.status_code}: {detail}")
        return response

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._send(method, path, **kwargs)
        return response.json() if response.content else None

    def download(self, path: str) -> bytes:
        """The raw body of a GET (an image), with the same error handling as :meth:`request`."""
        return self._send("GET", path).content

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, json=body)

    def close(self) -> None:
        self._http.close()


ServerOpt = Annotated[str, typer.Option("--server", envvar="EDGEFLEET_SERVER", help="control plane base URL")]


# For commands that can also work on the control plane's own files: set, they go through the API.
OptionalServerOpt = Annotated[str | None, typer.Option(
    "--server", envvar="EDGEFLEET_SERVER",
    help="control plane base URL: run this through its API. Unset: on the control plane's data directory here")]


TokenOpt = Annotated[str | None, typer.Option("--token", envvar="EDGEFLEET_TOKEN",
                                              help="API token (viewer for listings, operator to act)")]


JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON document instead of a table")]


def client_from(server: str, token: str | None) -> ApiClient:
    return ApiClient(server, token)


def fail(message: str, code: Exit) -> NoReturn:
    err_console.print(f"[red]error:[/] {message}", highlight=False)
    raise typer.Exit(int(code))


def emit_json(document: Any) -> None:
    # Plain print, not rich: rich would wrap long lines and could add markup.
    print(json.dumps(document, indent=2, sort_keys=True, default=str))


def cell(value: Any, fmt: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if fmt and isinstance(value, int | float):
        return format(value, fmt)
    if looks_like_timestamp(value):
        # One style for every moment, as on the dashboard: "2026-12-05 18:20:03 UTC".
        return format_utc(value, missing=str(value))
    return str(value)


def online_cell(row: dict[str, Any]) -> str:
    """"yes", "no", or "no (quiet)" for a device whose last word was online but has missed its reports since."""
    if row.get("online"):
        return "yes"
    return "no (quiet)" if row.get("gone_quiet") else "no"


class _FoldingTable(Table):
    """Cells wrap onto more lines instead of being cut: an id is never shown as "x86-6…"."""

    def add_column(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("overflow", "fold")
        super().add_column(*args, **kwargs)


def new_table(title: str) -> Table:
    """An empty table for listings; in a narrow terminal its cells wrap rather than truncate."""
    return _FoldingTable(title=title)


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[str]]) -> Table:
    result = new_table(title)
    for column in columns:
        result.add_column(column)
    for row in rows:
        result.add_row(*row)
    return result


def print_listing(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]], *, empty_hint: str) -> None:
    """A listing as a table, or, when it is empty, what to do next (on stderr, so stdout stays empty)."""
    if not rows:
        err_console.print(f"{title}: none yet. {empty_hint}", highlight=False)
        return
    console.print(table(title, columns, rows))


def call(server: str, token: str | None, method: str, path: str, body: Any = None, *, timeout_s: float = 15.0,
         **params: Any) -> Any:
    client = ApiClient(server, token, timeout_s=timeout_s)
    try:
        if method == "GET":
            return client.get(path, **params)
        if method == "POST":
            return client.post(path, body)
        return client.request(method, path, json=body)  # PUT, DELETE
    except ApiError as exc:
        fail(exc.detail, exc.exit_code)
    finally:
        client.close()
