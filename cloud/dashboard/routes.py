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
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from cloud import __version__
from cloud.dashboard.auth import COOKIE_NAME, DashboardUser, login, user_for_cookie
from cloud.dashboard.charts import Series, line_chart
from cloud.dashboard.data import ApiProblem, InProcessApi
from cloud.fleet import crud

__all__ = ["install_dashboard"]

HERE = Path(__file__).resolve().parent
templates = Jinja2Templates(directory=str(HERE / "templates"))
templates.env.globals["line_chart"] = line_chart
templates.env.globals["version"] = __version__

router = APIRouter(prefix="/ui", include_in_schema=False)

FLEET_PAGE_ROWS = 200
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
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _ago(value: Any) -> str:
    moment = _parse_time(value)
    if moment is None:
        return "never"
    seconds = (datetime.now(UTC) - moment).total_seconds()
    if seconds < 90:
        return f"{max(0, int(seconds))} s ago"
    if seconds < 5400:
        return f"{int(seconds // 60)} min ago"
    if seconds < 172800:
        return f"{int(seconds // 3600)} h ago"
    return f"{int(seconds // 86400)} d ago"


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


templates.env.filters["ago"] = _ago
templates.env.filters["num"] = _num
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
    base = {"user": user, "nav": page.split("/")[0].removesuffix(".html"), "now": datetime.now(UTC)}
    if live is not None and request.query_params.get("partial") == "1":
        return templates.TemplateResponse(request, live, {**base, **context}, status_code=status_code)
    return templates.TemplateResponse(request, page, {**base, "live_template": live, **context},
                                      status_code=status_code)


def _api(request: Request, user: DashboardUser) -> InProcessApi:
    return InProcessApi(request.app, user.token)


async def _form(request: Request, user: DashboardUser) -> dict[str, str]:
    form = await request.form()
    values = {k: v for k, v in form.items() if isinstance(v, str)}
    if values.get("csrf") != user.csrf:
        raise _Refused(400, "the form expired or came from another page; reload the page and try again")
    if not user.can_act:
        raise _Refused(403, f"your role ({user.role.value}) can view but not act; ask for an operator token")
    return values


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _flash_redirect(path: str, *, message: str = "", error: str = "") -> RedirectResponse:
    query = urlencode({k: v for k, v in (("message", message), ("error", error)) if v})
    return RedirectResponse(f"{path}?{query}" if query else path, status_code=303)


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


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, next: str | None = None) -> HTMLResponse:
    return _render(request, None, "login.html", None, {"next": _safe_next(next), "error": None})


@router.post("/login", response_class=HTMLResponse)
async def login_submit(request: Request) -> Response:
    form = await request.form()
    token = str(form.get("token") or "")
    target = _safe_next(str(form.get("next") or ""))
    try:
        user = await run_in_threadpool(login, request.app.state.plane.engine, token)
    except PermissionError as exc:
        return _render(request, None, "login.html", None, {"next": target, "error": str(exc)}, status_code=401)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(COOKIE_NAME, user.token, httponly=True, samesite="strict", path="/ui",
                        secure=request.url.scheme == "https")
    return response


@router.post("/logout")
def logout() -> RedirectResponse:
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
    for row in rows:
        row["health"] = _health(row)
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
    """Drift windows from the drift API, one line per score field, whatever its exact shape."""
    windows = drift if isinstance(drift, list) else (drift or {}).get("windows", []) if isinstance(drift, dict) else []
    scores: dict[str, list[tuple[datetime, float | None]]] = {}
    for window in windows:
        if not isinstance(window, dict):
            continue
        when = _parse_time(window.get("window_ended_at") or window.get("sent_at") or window.get("created_at"))
        if when is None:
            continue
        for key in ("score", "cusum", "p_value"):
            value = window.get(key)
            if isinstance(value, int | float):
                scores.setdefault(key, []).append((when, float(value)))
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
    windows = sorted(telemetry, key=lambda w: str(w.get("sent_at")))
    charts = {
        "throughput": line_chart("Frames per second", [_series(windows, "fps", "fps")], chart_id="chart-fps"),
        "latency": line_chart("Inference latency (ms)", [_series(windows, "p50", "p50_latency_ms"),
                                                         _series(windows, "p95", "p95_latency_ms")],
                              unit=" ms", chart_id="chart-latency", y_min=0),
        "confidence": line_chart("Mean confidence", [_series(windows, "confidence", "mean_confidence")],
                                 chart_id="chart-confidence", y_min=0, y_max=1),
        "resources": line_chart("CPU %", [_series(windows, "cpu %", "cpu_percent")], unit=" %",
                                chart_id="chart-cpu", y_min=0),
    }
    drift_lines = _drift_series(drift)
    if drift_lines:
        charts["drift"] = line_chart("Drift score and CUSUM per window", [s for s in drift_lines if s.label != "p_value"],
                                     chart_id="chart-drift", y_min=0)
        p_values = [s for s in drift_lines if s.label == "p_value"]
        if p_values:
            charts["drift_p"] = line_chart("Window p-value (low = unlike the training data)", p_values,
                                           chart_id="chart-drift-p", y_min=0, y_max=1)
    jobs = await run_in_threadpool(_device_jobs, request, device_id)
    device_alerts = [a for a in _items(alerts) if a.get("device_id") in (None, device_id)]
    return _render(request, user, "device.html", "device_live.html", {
        "device": device, "recent": list(reversed(windows))[:10], "charts": charts, "has_drift_api": drift is not None,
        "drift_available": bool(drift_lines), "samples": _sample_list(samples), "has_samples_api": samples is not None,
        "jobs": jobs, "alerts": device_alerts,
    })


def _sample_list(samples: Any) -> list[dict[str, Any]]:
    items = samples if isinstance(samples, list) else (samples or {}).get("items", []) if isinstance(samples, dict) else []
    return [s for s in items if isinstance(s, dict)][:24]


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
    running: dict[str, int] = {}
    for row in fleet:
        if row.get("online") and row.get("model_version"):
            running[str(row["model_version"])] = running.get(str(row["model_version"]), 0) + 1
    for model in models:
        model["scalar_metrics"] = _scalar_metrics(model.get("metrics") or {})
        model["running_on"] = running.get(model["version"], 0)
    return _render(request, user, "models.html", "models_live.html", {"models": models})


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
    return _render(request, user, "rollouts.html", "rollouts_live.html", {
        "rollouts": rollouts or [], "rollouts_available": rollouts is not None, "deployments": deployments[:20],
        "packages": packages, "profiles": profiles,
        "message": request.query_params.get("message"), "error": request.query_params.get("error"),
    })


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
        rollout = await api.get(f"/api/v1/rollouts/{quote(rollout_id, safe='')}")
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
            status = "stopped" if rollout.get("state") in ("aborted", "cancelled") else "current"
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
        proposals = await api.get("/api/v1/governance/proposals", default=None)
        rollout_proposals = await api.get("/api/v1/governance/rollout-proposals", default=None)
    return _render(request, user, "alerts.html", "alerts_live.html", {
        "alerts": _items(alerts), "alerts_available": alerts is not None, "state": state,
        "proposals": _items(proposals), "proposals_available": proposals is not None,
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


def _items(document: Any) -> list[dict[str, Any]]:
    items = document if isinstance(document, list) else (document or {}).get("items", []) if isinstance(document, dict) else []
    return [i for i in items if isinstance(i, dict)]


# --- wiring ------------------------------------------------------------------
def install_dashboard(app: FastAPI) -> None:
    """Mount the dashboard (``/ui``), its static files and the login redirect."""

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
