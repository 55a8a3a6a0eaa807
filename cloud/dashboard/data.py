"""The dashboard reads and acts through the control plane's own HTTP API, in process.

Going through ``/api/v1`` (over an ASGI transport, no socket) means the dashboard
shows exactly what the API serves, and every action passes the API's own role
checks and validation as the logged-in user. The user's principal rides in the
ASGI scope (:data:`cloud.api.deps.IN_PROCESS_PRINCIPAL`), so the dashboard never
needs, or holds, the user's bearer token. Features that have not
landed on a control plane (their routes answer 404 or 405) show an empty state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from cloud.api.deps import IN_PROCESS_PRINCIPAL
from cloud.security.tokens import Principal

__all__ = ["ApiAnswer", "InProcessApi", "drift_state", "model_health"]

# A model that gives one class to more than this share of a window's predictions has
# most likely collapsed (a covered lens, a broken input, a model that lost its way).
COLLAPSED_SHARE = 0.95
# ... judged only on windows with at least this many predictions.
COLLAPSED_MIN_FRAMES = 20


@dataclass(frozen=True)
class ApiAnswer:
    status: int
    body: Any

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def detail(self) -> str:
        if isinstance(self.body, dict) and "detail" in self.body:
            return str(self.body["detail"])
        return str(self.body)[:500]


class InProcessApi:
    def __init__(self, app: FastAPI, principal: Principal) -> None:
        async def as_user(scope: Scope, receive: Receive, send: Send) -> None:
            await app({**scope, IN_PROCESS_PRINCIPAL: principal}, receive, send)

        self._client = httpx.AsyncClient(transport=httpx.ASGITransport(app=as_user), base_url="http://control-plane",
                                         timeout=30)

    async def __aenter__(self) -> InProcessApi:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._client.aclose()

    async def call(self, method: str, path: str, body: Any = None, **params: Any) -> ApiAnswer:
        response = await self._client.request(method, path, json=body,
                                              params={k: v for k, v in params.items() if v is not None})
        content_type = response.headers.get("content-type", "")
        payload: Any = None
        if not response.content:
            payload = None
        elif content_type.startswith("application/json"):
            try:
                payload = response.json()
            except ValueError:
                payload = response.text
        elif content_type.startswith("text/"):
            payload = response.text
        else:
            payload = response.content  # images and other binary bodies pass through untouched
        return ApiAnswer(response.status_code, payload)

    async def get(self, path: str, default: Any = None, **params: Any) -> Any:
        """The JSON body, or ``default`` when the route or resource does not exist."""
        answer = await self.call("GET", path, **params)
        if answer.status in (404, 405):
            return default
        if not answer.ok:
            raise ApiProblem(answer)
        return answer.body

    async def post(self, path: str, body: Any = None) -> ApiAnswer:
        return await self.call("POST", path, body)


class ApiProblem(Exception):
    """The API answered a read with an error other than 404 (e.g. 403 for this role)."""

    def __init__(self, answer: ApiAnswer) -> None:
        super().__init__(answer.detail)
        self.answer = answer


def model_health(row: dict[str, Any], drift: dict[str, Any] | None = None) -> tuple[str, str]:
    """(state, why) of a device's model from its last telemetry window (else its last drift window).

    ``inference errors`` when the window counted failed inferences, ``collapsed`` when one
    class took more than 95% of at least 20 predictions, ``no data`` without a window, else ``ok``.
    """
    errors = row.get("inference_errors") or 0
    if errors:
        return "inference errors", f"{errors} failed inferences in the last window"
    counts = [int(v) for v in (row.get("class_counts") or {}).values() if isinstance(v, int | float)]
    if sum(counts) < COLLAPSED_MIN_FRAMES and drift is not None:
        counts = [int(v) for v in drift.get("last_window_class_counts") or [] if isinstance(v, int | float)]
    total = sum(counts)
    if total < COLLAPSED_MIN_FRAMES:
        return "no data", "no window with enough predictions yet"
    top = max(counts)
    share = top / total
    if share > COLLAPSED_SHARE:
        names = [str(k) for k, v in (row.get("class_counts") or {}).items() if v == top]
        which = f" ({names[0]})" if names else ""
        return "collapsed", f"one class{which} in {share:.0%} of the last window's {total} predictions"
    return "ok", f"top class in {share:.0%} of {total} predictions"


def drift_state(drift: dict[str, Any] | None) -> tuple[str, str]:
    """(state, why) from the drift API's per-device row: ok, alert, no data or baseline pending."""
    if drift is None:
        return "no data", "no drift window yet"
    state = str(drift.get("state") or "no data")
    if state == "alert":
        return state, f"{drift.get('open_alerts', 0)} open drift alert(s)"
    if state == "baseline pending":
        return state, "a camera baseline waits for confirmation on the device page"
    if state == "no data":
        return state, "no drift window yet"
    return state, "windows arriving, no open alert"
