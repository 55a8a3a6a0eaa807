"""Dashboard pages under ``/ui``: server-rendered HTML, refreshed in place by a little JS.

Each page renders a "live" fragment template; the same route with ``?partial=1``
returns just that fragment, which ``static/dashboard.js`` polls and swaps in, so a
page updates without a reload and works (minus live updates) without JS at all.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from markupsafe import Markup
from sqlmodel import Session, col, func, select
from starlette.concurrency import run_in_threadpool

from agent.contract.drift import DEFAULT_WINDOW_FRAMES, DEFAULT_WINDOW_S
from cloud import __version__
from cloud.dashboard.auth import (
    COOKIE_NAME,
    LOGIN_CSRF_COOKIE,
    DashboardUser,
    LoginThrottle,
    csrf_matches,
    login,
    logout,
    new_login_csrf,
    user_for_cookie,
)
from cloud.dashboard.candidates import Candidate, package_candidates, rejection_of
from cloud.dashboard.charts import Series, line_chart
from cloud.dashboard.data import ApiProblem, InProcessApi, drift_state, model_health
from cloud.fleet import crud
from cloud.monitor.tables import DriftAlert
from cloud.rollout.format import gate_text
from cloud.timefmt import format_utc, looks_like_timestamp, parse_utc, relative

__all__ = ["install_dashboard"]

HERE = Path(__file__).resolve().parent
templates = Jinja2Templates(directory=str(HERE / "templates"))
templates.env.globals["line_chart"] = line_chart
templates.env.globals["version"] = __version__

router = APIRouter(prefix="/ui", include_in_schema=False)

FLEET_PAGE_ROWS = 200
AUDIT_PAGE_ROWS = 50
ROLLOUT_ACTIONS = ("approve", "pause", "resume", "abort", "cancel")
# Which actions make sense in which rollout state (cloud/rollout/decisions.py); the API
# still has the last word (409 for an action the state does not allow).
ACTIONS_BY_STATE: dict[str, tuple[str, ...]] = {
    "running": ("pause", "abort", "cancel"),
    "paused": ("resume", "abort", "cancel"),
    "awaiting_approval": ("approve", "pause", "abort", "cancel"),
    "aborting": ("cancel",),
    "finishing": ("abort", "cancel"),
}
ACTION_LABELS = {"approve": "Approve next stage", "pause": "Pause", "resume": "Resume", "abort": "Abort and roll back",
                 "cancel": "Force-cancel"}
ACTION_QUESTIONS = {
    "approve": "Approve this stage and continue?",
    "pause": "Pause this rollout? Devices in flight finish; no new device is dispatched.",
    "resume": "Resume this rollout?",
    "abort": "Abort this rollout? Every device it touched goes back to its previous version.",
    "cancel": "Force-cancel this rollout? It stops at once and nothing is rolled back.",
}
PROPOSAL_ACTIONS = ("approve", "reject")


class LoginRequired(Exception):
    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


def _parse_time(value: Any) -> datetime | None:
    return parse_utc(value) if isinstance(value, str) else None


def _timestamp(value: Any, missing: str = "\u2013") -> Markup:
    """Every moment on every page: ``2026-12-05 18:20:03 UTC``, with "3 min ago" as its tooltip."""
    shown = format_utc(value, missing=missing)
    if shown == missing:
        return Markup('<span class="ts none">{}</span>').format(missing)
    return Markup('<span class="ts" title="{}">{}</span>').format(relative(value), shown)


def _num(value: Any, digits: int = 2) -> str:
    if value is None:
        return "\u2013"  # an en dash: "no value", distinct from a zero
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


templates.env.filters["timestamp"] = _timestamp
# The former relative-only filter: templates that still say ``|ago`` show the same absolute UTC format.
templates.env.filters["ago"] = lambda value: _timestamp(value, missing="never")
templates.env.filters["num"] = _num
# Gate values and thresholds: the same text as the CLI (cloud/rollout/format.py).
templates.env.filters["gate_text"] = gate_text
templates.env.tests["timestamp_like"] = looks_like_timestamp
templates.env.globals["rollout_progress"] = lambda rollout: rollout_progress(rollout)
templates.env.filters["tojson_pretty"] = lambda v: json.dumps(v, indent=2, sort_keys=True, default=str)


async def _user(request: Request) -> DashboardUser:
    # The token check queries the database: keep it off the event loop.
    user = await run_in_threadpool(user_for_cookie, request.app.state.plane.engine, request.cookies.get(COOKIE_NAME))
    if user is None:
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise LoginRequired(path)
    return user


def _render(request: Request, user: DashboardUser | None, page: str, live: str | None, context: dict[str, Any],
            *, status_code: int = 200) -> HTMLResponse:
    """The whole page, or only its live fragment when the poller asks (``?partial=1``)."""
    base: dict[str, Any] = {"user": user, "nav": page.split("/")[0].removesuffix(".html"), "now": datetime.now(UTC)}
    if live is not None and request.query_params.get("partial") == "1":
        return templates.TemplateResponse(request, live, {**base, **context}, status_code=status_code)
    if user is not None:  # the navigation's count of open drift alerts (full pages only: the poller skips it)
        base["open_alerts"] = _open_alert_count(request)
    return templates.TemplateResponse(request, page, {**base, "live_template": live, **context},
                                      status_code=status_code)


def _open_alert_count(request: Request) -> int:
    with Session(request.app.state.plane.engine) as session:
        return int(session.exec(select(func.count()).select_from(DriftAlert)
                                .where(col(DriftAlert.state) == "open")).one())


def _api(request: Request, user: DashboardUser) -> InProcessApi:
    return InProcessApi(request.app, user.principal)


async def _form(request: Request, user: DashboardUser) -> dict[str, str]:
    form = await request.form()
    values = {k: v for k, v in form.items() if isinstance(v, str)}
    if not csrf_matches(values.get("csrf"), user.csrf):
        raise _Refused(400, "the form expired or came from another page; reload the page and try again")
    if not user.can_act:
        raise _Refused(403, f"your role ({user.role.value}) can view but not act; ask for an operator token")
    return values


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _flash_redirect(path: str, *, message: str = "", error: str = "", anchor: str = "") -> RedirectResponse:
    query = urlencode({k: v for k, v in (("message", message), ("error", error)) if v})
    fragment = f"#{anchor}" if anchor else ""  # back to the section the form was in, where the flash shows
    return RedirectResponse((f"{path}?{query}" if query else path) + fragment, status_code=303)


# --- login -------------------------------------------------------------------
@router.get("", response_class=HTMLResponse)
@router.get("/", response_class=HTMLResponse)
def index() -> RedirectResponse:
    return RedirectResponse("/ui/fleet", status_code=303)


def _safe_next(value: str | None) -> str:
    # Only local dashboard paths: a crafted link must not bounce the user off-site.
    if value and value.startswith("/ui") and not value.startswith("//"):
        return value
    return "/ui/fleet"


def _login_form(request: Request, target: str, error: str | None, *, status_code: int = 200,
                headers: dict[str, str] | None = None) -> HTMLResponse:
    """The login page with a fresh CSRF value in the form and in its cookie."""
    csrf = new_login_csrf()
    response = _render(request, None, "login.html", None, {"next": target, "error": error, "csrf": csrf},
                       status_code=status_code)
    response.set_cookie(LOGIN_CSRF_COOKIE, csrf, httponly=True, samesite="strict", path="/ui/login",
                        secure=request.url.scheme == "https")
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, next: str | None = None) -> HTMLResponse:
    return _login_form(request, _safe_next(next), None)


def _client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


@router.post("/login", response_class=HTMLResponse)
async def login_submit(request: Request) -> Response:
    form = await request.form()
    token = str(form.get("token") or "")
    target = _safe_next(str(form.get("next") or ""))
    if not csrf_matches(str(form.get("csrf") or ""), request.cookies.get(LOGIN_CSRF_COOKIE)):
        return _login_form(request, target, "the login form expired or came from another page; try again",
                           status_code=400)
    throttle: LoginThrottle = request.app.state.login_throttle
    keys = throttle.keys(_client_address(request), token)
    wait_s = throttle.retry_after(keys)
    if wait_s:
        return _login_form(request, target, f"too many failed logins; try again in {wait_s} s", status_code=429,
                           headers={"retry-after": str(wait_s)})
    settings = request.app.state.plane.settings
    try:
        session_id, _ = await run_in_threadpool(login, request.app.state.plane.engine, token,
                                                ttl_s=settings.dashboard_session_ttl_s)
    except PermissionError as exc:
        throttle.failed(keys)
        return _login_form(request, target, str(exc), status_code=401)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(COOKIE_NAME, session_id, httponly=True, samesite="strict", path="/ui",
                        max_age=settings.dashboard_session_ttl_s, secure=request.url.scheme == "https")
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/ui/login")
    return response


@router.post("/logout")
async def logout_submit(request: Request) -> RedirectResponse:
    cookie = request.cookies.get(COOKIE_NAME)
    user = await run_in_threadpool(user_for_cookie, request.app.state.plane.engine, cookie)
    form = await request.form()
    # Only the session's own page may end it server-side; the cookie is dropped either way.
    if user is not None and csrf_matches(str(form.get("csrf") or ""), user.csrf):
        await run_in_threadpool(logout, request.app.state.plane.engine, cookie)
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(COOKIE_NAME, path="/ui")
    return response


# --- fleet -------------------------------------------------------------------
def _health(row: dict[str, Any]) -> str:
    if not row.get("online"):
        return "offline"
    if row.get("fps") is None:
        return "no data"
    return "healthy" if (row.get("fps") or 0) > 0 else "idle"


@router.get("/fleet", response_class=HTMLResponse)
async def fleet_page(request: Request, q: str = "", status: str = "all", profile: str = "", version: str = "",
                     limit: int = FLEET_PAGE_ROWS) -> Response:
    user = await _user(request)
    async with _api(request, user) as api:
        rows: list[dict[str, Any]] = await api.get("/api/v1/fleet", default=[])
        drift_rows: list[dict[str, Any]] = await api.get("/api/v1/drift/devices", default=[])
    drift_by_device = {str(d.get("device_id")): d for d in drift_rows if isinstance(d, dict)}
    for row in rows:
        row["health"] = _health(row)
        # Not only "is it running" but "is it right": drift and the model's own outputs.
        drift = drift_by_device.get(str(row["device_id"]))
        row["drift"], row["drift_why"] = drift_state(drift)
        row["model_health"], row["model_why"] = model_health(row, drift)
    profiles = sorted({str(r["hardware_profile"]) for r in rows if r.get("hardware_profile")})
    versions = sorted({str(r["model_version"]) for r in rows if r.get("model_version")})
    needle = q.strip().lower()
    shown = [
        r for r in rows
        if (status == "all" or (status == "online") == bool(r["online"]))
        and (not profile or r.get("hardware_profile") == profile)
        and (not version or r.get("model_version") == version)
        and (not needle or any(needle in str(r.get(k) or "").lower()
                               for k in ("device_id", "hardware_profile", "model_version", "runtime")))
    ]
    summary = {
        "total": len(rows),
        "online": sum(1 for r in rows if r["online"]),
        "offline": sum(1 for r in rows if not r["online"]),
        "versions": len(versions),
        "drift_alerts": sum(1 for r in rows if r["drift"] == "alert"),
        "unhealthy_models": sum(1 for r in rows if r["model_health"] in ("collapsed", "inference errors")),
    }
    # A live table of thousands of rows every 2 s helps nobody: show a page, say how to narrow it.
    limit = max(1, min(limit, 5000))
    return _render(request, user, "fleet.html", "fleet_live.html", {
        "rows": shown[:limit], "matching": len(shown), "limit": limit, "summary": summary, "profiles": profiles, "versions": versions,
        "filters": {"q": q, "status": status, "profile": profile, "version": version},
    })


# --- device detail -----------------------------------------------------------
def _device_jobs(request: Request, device_id: str) -> list[dict[str, Any]]:
    with Session(request.app.state.plane.engine) as session:
        return [job.model_dump(mode="json") for job in crud.list_device_jobs(session, device_id)]


def _series(windows: list[dict[str, Any]], label: str, key: str) -> Series:
    return Series(label, [(t, w.get(key)) for w in windows if (t := _parse_time(w.get("sent_at"))) is not None])


def _drift_series(drift: Any) -> list[Series]:
    """Drift windows from the drift API, one line per score field (and per camera, when the device
    has several: each camera's windows are its own test), whatever its exact shape."""
    windows = drift if isinstance(drift, list) else (drift or {}).get("windows", []) if isinstance(drift, dict) else []
    windows = [w for w in windows if isinstance(w, dict)]
    several = len({w.get("camera") for w in windows}) > 1
    scores: dict[str, list[tuple[datetime, float | None]]] = {}
    for window in windows:
        when = _parse_time(window.get("window_ended_at") or window.get("sent_at") or window.get("created_at"))
        if when is None:
            continue
        for key in ("score", "cusum", "p_value"):
            value = window.get(key)
            if isinstance(value, int | float):
                label = f"{key} ({window.get('camera')})" if several else key
                scores.setdefault(label, []).append((when, float(value)))
    return [Series(key, points) for key, points in scores.items()]


@router.get("/devices/{device_id}", response_class=HTMLResponse)
async def device_page(request: Request, device_id: str) -> Response:
    user = await _user(request)
    async with _api(request, user) as api:
        device = await api.get(f"/api/v1/devices/{device_id}")
        if device is None:
            return _render(request, user, "not_found.html", None,
                           {"what": f"device {device_id!r}", "back": "/ui/fleet"}, status_code=404)
        telemetry: list[dict[str, Any]] = await api.get(f"/api/v1/devices/{device_id}/telemetry", default=[],
                                                        limit=240)
        drift = await api.get(f"/api/v1/drift/devices/{quote(device_id, safe='')}/windows", default=None, limit=120)
        # status= (empty) asks for every sample, labelled or not.
        samples = await api.get("/api/v1/samples", default=None, device_id=device_id, status="", limit=24)
        alerts = await api.get("/api/v1/drift/alerts", default=None, device_id=device_id, limit=20)
        baselines = await api.get(f"/api/v1/devices/{quote(device_id, safe='')}/drift/baseline", default=None)
        cameras = await api.get(f"/api/v1/devices/{quote(device_id, safe='')}/cameras", default=None)
    windows = sorted(telemetry, key=lambda w: str(w.get("sent_at")))
    charts = {
        "throughput": line_chart("Frames per second", [_series(windows, "fps", "fps")], unit=" fps",
                                 axis_label="throughput (frames/s)", chart_id="chart-fps", y_min=0),
        "latency": line_chart("Inference latency (ms)", [_series(windows, "p50", "p50_latency_ms"),
                                                         _series(windows, "p95", "p95_latency_ms")],
                              unit=" ms", axis_label="latency (ms)", chart_id="chart-latency", y_min=0),
        "confidence": line_chart("Mean confidence", [_series(windows, "confidence", "mean_confidence")],
                                 axis_label="confidence (0 to 1)", chart_id="chart-confidence", y_min=0, y_max=1),
        "resources": line_chart("CPU %", [_series(windows, "cpu", "cpu_percent")], unit=" %",
                                axis_label="CPU (%)", chart_id="chart-cpu", y_min=0),
    }
    drift_lines = _drift_series(drift)
    if drift_lines:
        charts["drift"] = line_chart("Drift score and CUSUM per window", [s for s in drift_lines if not s.label.startswith("p_value")],
                                     axis_label="score (no unit)", chart_id="chart-drift", y_min=0)
        p_values = [s for s in drift_lines if s.label.startswith("p_value")]
        if p_values:
            charts["drift_p"] = line_chart("Window p-value (low = unlike the training data)", p_values,
                                           axis_label="p-value (0 to 1)", chart_id="chart-drift-p", y_min=0, y_max=1)
    jobs = await run_in_threadpool(_device_jobs, request, device_id)
    device_alerts = [a for a in _items(alerts) if a.get("device_id") in (None, device_id)]
    return _render(request, user, "device.html", "device_live.html", {
        "device": device, "recent": list(reversed(windows))[:10], "charts": charts, "has_drift_api": drift is not None,
        "drift_available": bool(drift_lines), "samples": _sample_list(samples), "has_samples_api": samples is not None,
        "jobs": jobs, "alerts": device_alerts, "baselines": _items(baselines), "cameras": cameras,
        "monitoring_defaults": {"window_frames": DEFAULT_WINDOW_FRAMES, "window_s": DEFAULT_WINDOW_S,
                                "baseline_windows": request.app.state.plane.settings.monitor.baseline_windows},
        "message": request.query_params.get("message"), "error": request.query_params.get("error"),
    })


@router.post("/devices/{device_id}/drift/baseline/confirm", response_class=HTMLResponse)
async def baseline_confirm(request: Request, device_id: str, camera: str | None = None,
                           package_id: str | None = None) -> Response:
    user = await _user(request)
    back = f"/ui/devices/{quote(device_id, safe='')}"
    try:
        form = await _form(request, user)
    except _Refused as exc:
        return _flash_redirect(back, error=exc.message)
    query = urlencode({k: v for k, v in (("camera", camera), ("package_id", package_id)) if v})
    here = f"{back}/drift/baseline/confirm" + (f"?{query}" if query else "")
    if form.get("confirm") != "yes":
        return _render(request, user, "confirm.html", None, {
            "action": "confirm", "what": f"the drift baseline of {device_id}" + (f" camera {camera}" if camera else ""),
            "post_to": here, "back": back})
    body = {k: v for k, v in (("camera", camera), ("package_id", package_id)) if v}
    async with _api(request, user) as api:
        answer = await api.post(f"/api/v1/devices/{quote(device_id, safe='')}/drift/baseline/confirm", body or None)
    if not answer.ok:
        return _flash_redirect(back, error=f"confirm refused: {answer.detail}")
    return _flash_redirect(back, message="baseline confirmed: this camera is now compared with what it normally sees")


def _camera_from_form(form: dict[str, str]) -> dict[str, Any]:
    """The API body for one camera from the device page's form; the API checks the values."""
    region_text = form.get("region", "").strip()
    region: dict[str, Any] | None = None
    if region_text:
        parts = [part.strip() for part in region_text.split(",")]
        if len(parts) != 4:
            raise _Refused(422, "region takes four numbers: x,y,width,height as fractions of the frame (0,0,1,1 is all)")
        try:
            region = dict(zip(("x", "y", "width", "height"), map(float, parts), strict=True))
        except ValueError:
            raise _Refused(422, "region takes four numbers: x,y,width,height as fractions of the frame") from None
    try:
        fps = float(form.get("target_fps") or 5)
    except ValueError:
        raise _Refused(422, "target fps must be a number between 0 and 120") from None
    return {"name": form.get("name", "").strip(), "source": form.get("source", "").strip(), "target_fps": fps,
            "region": region, "package_id": form.get("package_id", "").strip() or None,
            "rtsp_transport": form.get("rtsp_transport") or "tcp"}


@router.post("/devices/{device_id}/cameras", response_class=HTMLResponse)
async def camera_add(request: Request, device_id: str) -> Response:
    user = await _user(request)
    back = f"/ui/devices/{quote(device_id, safe='')}"
    try:
        body = _camera_from_form(await _form(request, user))
    except _Refused as exc:
        return _flash_redirect(back, error=exc.message, anchor="cameras")
    async with _api(request, user) as api:
        answer = await api.post(f"/api/v1/devices/{quote(device_id, safe='')}/cameras", body)
    if not answer.ok:
        return _flash_redirect(back, error=f"camera not added: {answer.detail}", anchor="cameras")
    return _flash_redirect(back, message=f"camera {body['name']} added: sent to the device as revision "
                                         f"{answer.body['revision']}", anchor="cameras")


@router.post("/devices/{device_id}/cameras/{name}/remove", response_class=HTMLResponse)
async def camera_remove(request: Request, device_id: str, name: str) -> Response:
    user = await _user(request)
    back = f"/ui/devices/{quote(device_id, safe='')}"
    try:
        form = await _form(request, user)
    except _Refused as exc:
        return _flash_redirect(back, error=exc.message, anchor="cameras")
    if form.get("confirm") != "yes":
        return _render(request, user, "confirm.html", None, {
            "action": "remove", "what": f"camera {name} of {device_id}",
            "post_to": f"{back}/cameras/{quote(name, safe='')}/remove", "back": back})
    async with _api(request, user) as api:
        answer = await api.call("DELETE", f"/api/v1/devices/{quote(device_id, safe='')}/cameras/{quote(name, safe='')}")
    if not answer.ok:
        return _flash_redirect(back, error=f"camera not removed: {answer.detail}", anchor="cameras")
    return _flash_redirect(back, message=f"camera {name} removed: sent to the device as revision "
                                         f"{answer.body['revision']}", anchor="cameras")


def _sample_list(samples: Any) -> list[dict[str, Any]]:
    items = samples if isinstance(samples, list) else (samples or {}).get("items", []) if isinstance(samples, dict) else []
    return [{**s, "overlay": _box_overlay(s)} for s in items if isinstance(s, dict)][:24]


# Samples with boxes are shown this wide, so labels on the boxes stay readable.
BOXED_SAMPLE_WIDTH_PX = 240


def _caption_y(top: float, bottom: float, *, candidate: bool) -> float:
    """Where a box's caption goes: above the active model's box (inside it at the top edge),
    inside the bottom of the candidate's, so the two models' captions of one object do not overlap."""
    if candidate:
        return round(bottom - 3, 1)
    return round(top - 3 if top >= 12 else top + 11, 1)


def _box_overlay(sample: dict[str, Any]) -> dict[str, Any] | None:
    """A detection sample's boxes in display pixels for the SVG drawn over its image (None without boxes)."""
    boxes = [b for b in sample.get("boxes") or [] if isinstance(b, dict)]
    if not boxes:
        return None
    width = BOXED_SAMPLE_WIDTH_PX
    image_w, image_h = sample.get("image_width") or 0, sample.get("image_height") or 0
    height = round(width * image_h / image_w) if image_w and image_h else width
    drawn = []
    for box in boxes:
        try:
            x1, y1, x2, y2 = (float(box[k]) for k in ("x1", "y1", "x2", "y2"))
            score = float(box.get("score") or 0.0)
        except (KeyError, TypeError, ValueError):
            continue  # a malformed stored box is left out, never a broken page
        drawn.append({"x": round(x1 * width, 1), "y": round(y1 * height, 1), "w": round((x2 - x1) * width, 1),
                      "h": round((y2 - y1) * height, 1), "label": str(box.get("label", "")), "score": score,
                      "model": "candidate" if box.get("model") == "candidate" else "active",
                      "text_y": _caption_y(y1 * height, y2 * height, candidate=box.get("model") == "candidate")})
    return {"width": width, "height": height, "boxes": drawn}


# --- model registry ----------------------------------------------------------
def _scalar_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if isinstance(v, int | float | str | bool)}


def _slices(metrics: dict[str, Any]) -> dict[str, dict[str, Any]]:
    for key in ("per_slice", "slices", "by_slice"):
        value = metrics.get(key)
        if isinstance(value, dict):
            return {str(k): (v if isinstance(v, dict) else {"value": v}) for k, v in value.items()}
        if isinstance(value, list):
            return {str(v.get("slice") or v.get("name") or i): v for i, v in enumerate(value) if isinstance(v, dict)}
    return {}


@router.get("/models", response_class=HTMLResponse)
async def models_page(request: Request) -> Response:
    user = await _user(request)
    async with _api(request, user) as api:
        models: list[dict[str, Any]] = await api.get("/api/v1/models", default=[])
        fleet: list[dict[str, Any]] = await api.get("/api/v1/fleet", default=[])
        audit_events = None
        if request.query_params.get("partial") != "1":  # outside the live region: full page loads only
            audit_events = await api.get("/api/v1/governance/audit", default=None, limit=AUDIT_PAGE_ROWS)
    running: dict[str, int] = {}
    for row in fleet:
        if row.get("online") and row.get("model_version"):
            running[str(row["model_version"])] = running.get(str(row["model_version"]), 0) + 1
    for model in models:
        model["scalar_metrics"] = _scalar_metrics(model.get("metrics") or {})
        model["running_on"] = running.get(model["version"], 0)
    return _render(request, user, "models.html", "models_live.html", {
        "models": models, "audit_events": list(reversed(_items(audit_events))), "audit_available": audit_events is not None,
    })


@router.get("/jobs", response_class=HTMLResponse)
async def jobs_page(request: Request) -> Response:
    user = await _user(request)
    async with _api(request, user) as api:
        jobs: list[dict[str, Any]] = await api.get("/api/v1/jobs", default=[], limit=100)
    return _render(request, user, "jobs.html", "jobs_live.html", {"jobs": jobs})


@router.get("/models/{version}", response_class=HTMLResponse)
async def model_page(request: Request, version: str) -> Response:
    user = await _user(request)
    async with _api(request, user) as api:
        model = await api.get(f"/api/v1/models/{quote(version, safe='')}")
        if model is None:
            return _render(request, user, "not_found.html", None,
                           {"what": f"model version {version!r}", "back": "/ui/models"}, status_code=404)
        lineage = await api.get(f"/api/v1/governance/lineage/{quote(version, safe='')}", default=None)
        packages: list[dict[str, Any]] = await api.get("/api/v1/packages", default=[])
        fleet: list[dict[str, Any]] = await api.get("/api/v1/fleet", default=[])
    metrics = model.get("metrics") or {}
    return _render(request, user, "model.html", None, {
        "model": model, "scalar_metrics": _scalar_metrics(metrics), "slices": _slices(metrics),
        "slice_columns": sorted({k for s in _slices(metrics).values() for k in s if isinstance(s.get(k), int | float)}),
        "lineage": lineage, "packages": [p for p in packages if p.get("model_version") == version],
        "devices": [r for r in fleet if r.get("model_version") == version],
    })


# --- rollouts ----------------------------------------------------------------
@router.get("/rollouts", response_class=HTMLResponse)
async def rollouts_page(request: Request) -> Response:
    user = await _user(request)
    async with _api(request, user) as api:
        rollouts = await api.get("/api/v1/rollouts", default=None)
        deployments: list[dict[str, Any]] = await api.get("/api/v1/deployments", default=[])
        packages: list[dict[str, Any]] = await api.get("/api/v1/packages", default=[])
        fleet: list[dict[str, Any]] = await api.get("/api/v1/fleet", default=[])
    profiles = sorted({str(r["hardware_profile"]) for r in fleet if r.get("hardware_profile")})
    # The form (and its gate checks) is only on the whole page, not in the live fragment.
    candidates = ([] if request.query_params.get("partial") == "1"
                  else await run_in_threadpool(package_candidates, request.app.state.plane.engine))
    return _render(request, user, "rollouts.html", "rollouts_live.html", {
        "rollouts": rollouts or [], "rollouts_available": rollouts is not None, "deployments": deployments[:20],
        "packages": packages, "candidates": candidates, "profiles": profiles, "form": {}, "preview": None,
        "message": request.query_params.get("message"), "error": request.query_params.get("error"),
    })


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _release_package_ids(spec: dict[str, Any]) -> set[str]:
    release = _mapping(spec.get("release"))
    ids = {str(release["package_id"])} if release.get("package_id") else set()
    packages = release.get("packages")
    if isinstance(packages, dict):
        ids |= {str(v) for v in packages.values()}
    return ids


async def _refuse_rejected(request: Request, spec: dict[str, Any]) -> list[Candidate]:
    """The form's candidates; raises when the spec names a package its quality gate rejected."""
    candidates = await run_in_threadpool(package_candidates, request.app.state.plane.engine)
    refusal = rejection_of(candidates, _release_package_ids(spec))
    if refusal:
        raise _Refused(422, f"{refusal}; choose a package that passed its gates")
    return candidates


def _plan_view(spec: dict[str, Any], plan: dict[str, Any], fleet: list[dict[str, Any]]) -> dict[str, Any]:
    """The dry-run plan as the preview shows it: 1-based stages, devices per stratum, package per profile."""
    release = _mapping(spec.get("release"))
    by_profile = _mapping(release.get("packages"))
    profile_of = {str(d.get("device_id")): str(d.get("hardware_profile")) for d in fleet}
    stages: list[dict[str, Any]] = []
    previous: dict[str, int] = {}
    for number, stage in enumerate(plan.get("stages") or [], start=1):
        cumulative = stage.get("cumulative_per_stratum") or {}
        stages.append({
            "number": number, "cumulative": cumulative,
            "new_per_stratum": {k: int(n) - int(previous.get(k, 0)) for k, n in cumulative.items()},
            "devices": stage.get("devices") or [], "offline": set(stage.get("offline") or []),
        })
        previous = cumulative
    planned = [d for s in stages for d in s["devices"]]
    profiles = sorted({profile_of.get(d, "?") for d in planned})
    return {
        "strata": plan.get("strata") or {}, "stages": stages, "skipped": plan.get("skipped") or {},
        "total": len(planned),
        "package_by_profile": {p: by_profile.get(p) or release.get("package_id") or "\u2013" for p in profiles},
    }


@router.post("/rollouts/preview", response_class=HTMLResponse)
async def rollout_preview(request: Request) -> Response:
    """Dry run from the form: the plan the API would make now (``POST /api/v1/rollouts/plan``); nothing is stored."""
    user = await _user(request)
    try:
        form = await _form(request, user)
        spec = _spec_from_form(form)
        candidates = await _refuse_rejected(request, spec)
    except _Refused as exc:
        return _flash_redirect("/ui/rollouts", error=exc.message)
    async with _api(request, user) as api:
        answer = await api.post("/api/v1/rollouts/plan", spec)
        rollouts = await api.get("/api/v1/rollouts", default=None)
        deployments: list[dict[str, Any]] = await api.get("/api/v1/deployments", default=[])
        packages: list[dict[str, Any]] = await api.get("/api/v1/packages", default=[])
        fleet: list[dict[str, Any]] = await api.get("/api/v1/fleet", default=[])
    preview: dict[str, Any] = ({"plan": _plan_view(spec, answer.body, fleet)} if answer.ok and isinstance(answer.body, dict)
                               else {"error": f"the control plane cannot plan this rollout: {answer.detail}"})
    return _render(request, user, "rollouts.html", None, {
        "rollouts": rollouts or [], "rollouts_available": rollouts is not None, "deployments": deployments[:20],
        "packages": packages, "candidates": candidates, "form": form, "preview": preview,
        "profiles": sorted({str(r["hardware_profile"]) for r in fleet if r.get("hardware_profile")}),
        "message": None, "error": None,
    }, status_code=200 if answer.ok else 422)


def _stages_from_form(text: str, kind: str, approval: bool) -> list[dict[str, Any]]:
    stages: list[dict[str, Any]] = []
    for part in [p.strip() for p in text.replace(";", ",").split(",") if p.strip()]:
        try:
            size = float(part.rstrip("%"))
        except ValueError:
            raise _Refused(422, f"stage size {part!r} is not a number; write e.g. 10,50,100") from None
        stage: dict[str, Any] = {"percent": size} if kind == "percent" else {"count": int(size)}
        if approval:
            stage["require_approval"] = True
        stages.append(stage)
    if not stages:
        raise _Refused(422, "give at least one stage size, e.g. 10,50,100")
    if approval:
        stages[-1].pop("require_approval", None)
    return stages


def _spec_from_form(form: dict[str, str]) -> dict[str, Any]:
    advanced = form.get("spec", "").strip()
    if advanced:
        try:
            document = json.loads(advanced)
        except ValueError:
            import yaml

            try:
                document = yaml.safe_load(advanced)
            except yaml.YAMLError as exc:
                raise _Refused(422, f"the spec is neither JSON nor YAML: {exc}") from None
        if not isinstance(document, dict):
            raise _Refused(422, "the spec must be a mapping with name, release, target and stages")
        return document
    package_id = form.get("package_id", "").strip()
    if not package_id:
        raise _Refused(422, "choose a package to roll out")
    target: dict[str, Any]
    device_ids = [d.strip() for d in form.get("device_ids", "").replace("\n", ",").split(",") if d.strip()]
    if device_ids:
        target = {"device_ids": device_ids}
    elif form.get("hardware_profile"):
        target = {"hardware_profiles": [form["hardware_profile"]]}
    else:
        target = {"all_devices": True}
    try:
        soak_s = float(form.get("soak_s") or 0)
    except ValueError:
        raise _Refused(422, "soak must be a number of seconds") from None
    return {
        "name": form.get("name", "").strip() or f"rollout of {package_id}",
        "release": {"package_id": package_id},
        "target": target,
        "stages": _stages_from_form(form.get("stages", ""), form.get("stage_kind", "percent"),
                                    form.get("require_approval") == "on"),
        "soak_s": soak_s,
    }


@router.post("/rollouts")
async def rollout_create(request: Request) -> Response:
    user = await _user(request)
    try:
        form = await _form(request, user)
        spec = _spec_from_form(form)
        await _refuse_rejected(request, spec)
    except _Refused as exc:
        return _flash_redirect("/ui/rollouts", error=exc.message)
    async with _api(request, user) as api:
        answer = await api.post("/api/v1/rollouts", spec)
    if not answer.ok:
        return _flash_redirect("/ui/rollouts", error=f"the control plane refused the rollout: {answer.detail}")
    rollout_id = answer.body.get("id") if isinstance(answer.body, dict) else None
    if rollout_id is None:
        return _flash_redirect("/ui/rollouts", message="rollout started")
    return _flash_redirect(f"/ui/rollouts/{quote(str(rollout_id), safe='')}", message="rollout started")


@router.get("/rollouts/{rollout_id}", response_class=HTMLResponse)
async def rollout_page(request: Request, rollout_id: str) -> Response:
    user = await _user(request)
    async with _api(request, user) as api:
        # The devices' cameras come with the devices; the rollout itself is read without them.
        rollout = await api.get(f"/api/v1/rollouts/{quote(rollout_id, safe='')}", cameras="false")
        devices = await api.get(f"/api/v1/rollouts/{quote(rollout_id, safe='')}/devices", default=[])
    if rollout is None:
        return _render(request, user, "not_found.html", None,
                       {"what": f"rollout {rollout_id!r}", "back": "/ui/rollouts"}, status_code=404)
    return _render(request, user, "rollout.html", "rollout_live.html", {
        "rollout": rollout, "devices": devices or [], "stage_rows": _stage_rows(rollout, devices or []),
        "actions": ACTIONS_BY_STATE.get(str(rollout.get("state")), ()),
        "action_labels": ACTION_LABELS, "action_questions": ACTION_QUESTIONS,
        "message": request.query_params.get("message"), "error": request.query_params.get("error"),
    })


FINAL_STATES = ("completed", "aborted", "cancelled")
# What the rollout is doing, in words, when it is not evaluating gates in its phase.
PHASE_BY_STATE = {
    "paused": "paused: no device is dispatched until it is resumed",
    "awaiting_approval": "waiting for an operator to approve the next stage",
    "aborting": "rolling back every device it touched",
    "finishing": "every stage passed; waiting for offline devices to report back",
}


def rollout_progress(rollout: dict[str, Any]) -> dict[str, Any]:
    """What the rollout page says about where the rollout is, true to its state.

    The last gate evaluation is stored as the engine left it: once a rollout stops
    running, a "soaking (28/30s)" from its last pass is history, not a countdown.
    """
    state = str(rollout.get("state"))
    evaluation = rollout.get("evaluation") or {}
    running = state == "running"
    final = state in FINAL_STATES
    last_decision = (rollout.get("decisions") or [{}])[-1] if final else {}
    if running:
        phase = str(rollout.get("phase") or "\u2013")
    elif final:
        phase = f"ended: {state.replace('_', ' ')}"
    else:
        phase = PHASE_BY_STATE.get(state, state.replace("_", " "))
    # A waiting verdict ("soaking", "collecting samples") only means something while the rollout runs.
    stale_wait = not running and evaluation.get("action") == "wait"
    return {
        "running": running, "final": final, "phase": phase,
        "ended_at": rollout.get("finished_at") if final else None,
        "ended_reason": last_decision.get("reason") if final else None,
        "ended_by": last_decision.get("actor") if final else None,
        "evaluation_current": running,
        "evaluation_reason": None if stale_wait else evaluation.get("reason"),
        "evaluation_action": None if stale_wait else evaluation.get("action"),
    }


def _stage_rows(rollout: dict[str, Any], devices: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per stage: planned cumulative size per stratum, and its devices by state now."""
    plan = rollout.get("plan") or {}
    sizes = plan.get("stage_sizes") or [s.get("cumulative_per_stratum", {}) for s in plan.get("stages", [])]
    current = rollout.get("stage")
    rows = []
    for index, per_stratum in enumerate(sizes):
        states: dict[str, int] = {}
        for device in devices:
            if device.get("stage") == index:
                states[str(device.get("state"))] = states.get(str(device.get("state")), 0) + 1
        if rollout.get("state") == "completed" or (isinstance(current, int) and index < current):
            status = "done"
        elif index == current:
            status = "stopped" if rollout.get("state") in ("aborting", "aborted", "cancelled") else "current"
        else:
            status = "upcoming"
        rows.append({"index": index, "sizes": per_stratum if isinstance(per_stratum, dict) else {},
                     "states": states, "devices": sum(states.values()), "status": status})
    return rows


@router.post("/rollouts/{rollout_id}/{action}", response_class=HTMLResponse)
async def rollout_action(request: Request, rollout_id: str, action: str) -> Response:
    user = await _user(request)
    back = f"/ui/rollouts/{quote(rollout_id, safe='')}"
    if action not in ROLLOUT_ACTIONS:
        return _flash_redirect(back, error=f"unknown action {action!r}; use one of {', '.join(ROLLOUT_ACTIONS)}")
    try:
        form = await _form(request, user)
    except _Refused as exc:
        return _flash_redirect(back, error=exc.message)
    if form.get("confirm") != "yes":
        # Without JS there was no confirm() dialog: ask on a page of its own.
        return _render(request, user, "confirm.html", None, {
            "action": action, "what": f"rollout {rollout_id}", "post_to": f"{back}/{action}", "back": back,
        })
    async with _api(request, user) as api:
        answer = await api.post(f"/api/v1/rollouts/{quote(rollout_id, safe='')}/{action}")
    if not answer.ok:
        return _flash_redirect(back, error=f"{action} refused: {answer.detail}")
    return _flash_redirect(back, message=f"{action} requested")


# --- alerts and retraining proposals -----------------------------------------
@router.get("/alerts", response_class=HTMLResponse)
async def alerts_page(request: Request, state: str = "") -> Response:
    user = await _user(request)
    async with _api(request, user) as api:
        alerts = await api.get("/api/v1/drift/alerts", default=None, state=state or None)
        drift_devices = await api.get("/api/v1/drift/devices", default=None)
        proposals = await api.get("/api/v1/governance/proposals", default=None)
        rollout_proposals = await api.get("/api/v1/governance/rollout-proposals", default=None)
    return _render(request, user, "alerts.html", "alerts_live.html", {
        "alerts": _items(alerts), "alerts_available": alerts is not None, "state": state,
        "drift_devices": _items(drift_devices), "proposals": _items(proposals), "proposals_available": proposals is not None,
        "rollout_proposals": _items(rollout_proposals),
        "message": request.query_params.get("message"), "error": request.query_params.get("error"),
    })


@router.post("/rollout-proposals/{proposal_id}/{action}", response_class=HTMLResponse)
async def rollout_proposal_action(request: Request, proposal_id: str, action: str) -> Response:
    user = await _user(request)
    if action not in PROPOSAL_ACTIONS:
        return _flash_redirect("/ui/alerts", error=f"unknown action {action!r}; use approve or reject")
    try:
        form = await _form(request, user)
    except _Refused as exc:
        return _flash_redirect("/ui/alerts", error=exc.message)
    if form.get("confirm") != "yes":
        return _render(request, user, "confirm.html", None, {
            "action": action, "what": f"rollout proposal {proposal_id}",
            "post_to": f"/ui/rollout-proposals/{quote(proposal_id, safe='')}/{action}", "back": "/ui/alerts",
        })
    async with _api(request, user) as api:
        answer = await api.post(f"/api/v1/governance/rollout-proposals/{quote(proposal_id, safe='')}/{action}")
    if not answer.ok:
        return _flash_redirect("/ui/alerts", error=f"{action} refused: {answer.detail}")
    body = answer.body if isinstance(answer.body, dict) else {}
    if action == "approve" and body.get("rollout_id"):
        return _flash_redirect(f"/ui/rollouts/{quote(str(body['rollout_id']), safe='')}",
                               message=f"proposal {proposal_id} approved: rollout started")
    return _flash_redirect("/ui/alerts", message=f"proposal {proposal_id} {action}d")


@router.get("/samples/{sample_id}/image")
async def sample_image(request: Request, sample_id: str) -> Response:
    """A sample's JPEG through the user's token (an <img> cannot send the API's bearer header)."""
    user = await _user(request)
    async with _api(request, user) as api:
        answer = await api.call("GET", f"/api/v1/samples/{quote(sample_id, safe='')}/image")
        raw = answer.body
    if answer.status != 200:
        return Response(status_code=answer.status if answer.status >= 400 else 502)
    return Response(content=raw if isinstance(raw, bytes) else b"", media_type="image/jpeg",
                    headers={"cache-control": "private, max-age=3600"})


@router.post("/samples/{sample_id}/label", response_class=HTMLResponse)
async def sample_label(request: Request, sample_id: str) -> Response:
    """Label one sample from the device page: the API checks the class and records who relabelled what."""
    user = await _user(request)
    async with _api(request, user) as api:
        sample = await api.get(f"/api/v1/samples/{quote(sample_id, safe='')}")
    if sample is None:
        return _render(request, user, "not_found.html", None,
                       {"what": f"sample {sample_id!r}", "back": "/ui/fleet"}, status_code=404)
    back = f"/ui/devices/{quote(str(sample['device_id']), safe='')}"
    try:
        form = await _form(request, user)
    except _Refused as exc:
        return _flash_redirect(back, error=exc.message, anchor="samples")
    label = form.get("label", "").strip()
    if not label:
        return _flash_redirect(back, error=f"choose a class for sample {sample_id}", anchor="samples")
    async with _api(request, user) as api:
        answer = await api.post("/api/v1/samples/labels", {"labels": {sample_id: label}})
    if not answer.ok:
        return _flash_redirect(back, error=f"label refused: {answer.detail}", anchor="samples")
    changes = answer.body.get("changes", []) if isinstance(answer.body, dict) else []
    change = changes[0] if changes and isinstance(changes[0], dict) else {}
    if change.get("unchanged"):
        message = f"sample {sample_id} already labelled {label}"
    elif change.get("relabelled"):
        message = f"sample {sample_id} relabelled from {change.get('from') or 'rejected'} to {label}"
    else:
        message = f"sample {sample_id} labelled {label}"
    return _flash_redirect(back, message=message, anchor="samples")


def _items(document: Any) -> list[dict[str, Any]]:
    items = document if isinstance(document, list) else (document or {}).get("items", []) if isinstance(document, dict) else []
    return [i for i in items if isinstance(i, dict)]


# --- wiring ------------------------------------------------------------------
def install_dashboard(app: FastAPI) -> None:
    """Mount the dashboard (``/ui``), its static files and the login redirect."""
    app.state.login_throttle = LoginThrottle(app.state.plane.settings.login_failures_per_minute)

    @app.exception_handler(LoginRequired)
    async def _login_required(request: Request, exc: LoginRequired) -> Response:
        if request.query_params.get("partial") == "1":
            # The poller reloads the page, which then lands on the login form.
            return Response(status_code=401, headers={"x-edgefleet-login": "/ui/login"})
        return RedirectResponse(f"/ui/login?next={quote(exc.next_path, safe='')}", status_code=303)

    @app.exception_handler(ApiProblem)
    async def _api_problem(request: Request, exc: ApiProblem) -> Response:
        user = user_for_cookie(request.app.state.plane.engine, request.cookies.get(COOKIE_NAME))
        return _render(request, user, "problem.html", None, {"status": exc.answer.status, "detail": exc.answer.detail},
                       status_code=exc.answer.status if 400 <= exc.answer.status < 600 else 502)

    @app.get("/", include_in_schema=False)
    def _root() -> RedirectResponse:
        return RedirectResponse("/ui/fleet", status_code=303)

    app.include_router(router)
    app.mount("/ui/static", StaticFiles(directory=str(HERE / "static")), name="dashboard-static")
