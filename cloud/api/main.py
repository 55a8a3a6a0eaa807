"""The HTTP API application."""

from __future__ import annotations

import re
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from cloud import __version__
from cloud.api.deps import require_access
from cloud.api.hardening import BodySizeLimit, RouteLimit, SecurityHeaders
from cloud.api.routes import (
    auth,
    cameras,
    datasets,
    deployments,
    devices,
    drift,
    enroll,
    fleet,
    governance,
    jobs,
    models,
    packages,
    rollouts,
    samples,
    tuf,
)
from cloud.core.plane import Plane
from cloud.dashboard import install_dashboard
from cloud.errors import EdgeFleetError
from cloud.ops.access_log import install_access_log_filter
from cloud.ops.metrics import install_metrics


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error["loc"] if p != "body") or "body"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


def _document_validation_errors(app: FastAPI) -> None:
    """Make the OpenAPI document describe the 422 body ``_invalid`` really returns.

    FastAPI documents its default ``{"detail": [errors]}``; clients (and schemathesis)
    validating against the document would reject our ``{"detail": str, "errors": [...]}``.
    """
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schemas = generate().get("components", {}).get("schemas", {})
            if "HTTPValidationError" in schemas:
                error = {"type": "object", "required": ["loc", "msg", "type"], "properties": {
                    "loc": {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]}},
                    "msg": {"type": "string"}, "type": {"type": "string"}}}
                schemas["HTTPValidationError"] = {
                    "title": "HTTPValidationError", "type": "object", "required": ["detail"],
                    "properties": {"detail": {"type": "string", "title": "Detail"},
                                   "errors": {"type": "array", "items": error}},
                }
        return app.openapi_schema or generate()

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(plane: Plane) -> FastAPI:
    app = FastAPI(title="EdgeFleet control plane", version=__version__)
    app.state.plane = plane
    _document_validation_errors(app)

    @app.exception_handler(EdgeFleetError)
    async def _edgefleet_error(request: Request, exc: EdgeFleetError) -> JSONResponse:
        # One mapping for the whole family: each error class carries its status (cloud/errors.py).
        return JSONResponse(status_code=exc.http_status, content={"detail": str(exc)})

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # One readable sentence first; the structured errors stay for clients that want them.
        return JSONResponse(
            status_code=422,
            content={
                "detail": f"invalid request: {_describe_validation(exc)}",
                # ctx may hold exception objects; keep only the JSON-safe parts.
                "errors": [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()],
            },
        )

    @app.get("/api/v1/health", tags=["meta"])
    def health() -> dict[str, object]:
        return {
            "status": "ok",
            "version": __version__,
            "mqtt_connected": bool(plane.mqtt and plane.mqtt.connected.is_set()),
        }

    # Every resource router needs a token: viewer to read, operator to change (cloud/api/deps.py).
    for module in (devices, cameras, models, packages, deployments, fleet):
        app.include_router(module.router, prefix="/api/v1", dependencies=[Depends(require_access)])
    app.include_router(rollouts.router, prefix="/api/v1", dependencies=[Depends(require_access)])
    app.include_router(datasets.router, prefix="/api/v1", dependencies=[Depends(require_access)])
    app.include_router(auth.router, prefix="/api/v1")  # admin only (its own dependency)
    app.include_router(enroll.router, prefix="/api/v1")  # one-time token, or a device's own token
    app.include_router(tuf.router)  # public: the content is signed
    # Drift, samples, labelling and governance; sample uploads carry their own device rule.

    for module in (drift, samples, governance, jobs):
        app.include_router(module.router, prefix="/api/v1", dependencies=[Depends(require_access)])
    app.include_router(samples.device_router, prefix="/api/v1")
    app.include_router(drift.device_router, prefix="/api/v1", dependencies=[Depends(require_access)])
    # Operator experience: the dashboard (/ui, its own cookie login) and Prometheus /metrics.

    install_dashboard(app)
    install_metrics(app, plane)
    _install_hardening(app, plane)
    # Their polls (live refreshes, scrapes) stay out of the access log at INFO.
    install_access_log_filter()
    return app


def _install_hardening(app: FastAPI, plane: Plane) -> None:
    """Bounded bodies for every route (uploads get their own, larger limits) and security headers."""
    settings = plane.settings
    upload_limits = [
        RouteLimit("PUT", re.compile(r"^/api/v1/devices/[^/]+/samples/blobs/?$"), settings.monitor.max_upload_bytes,
                   "EDGEFLEET_MONITOR_MAX_UPLOAD_BYTES"),
        RouteLimit("POST", re.compile(r"^/api/v1/models/import/?$"), settings.max_model_upload_bytes,
                   "EDGEFLEET_MAX_MODEL_UPLOAD_BYTES"),
    ]
    # The last added is the outermost: headers go on every answer, the limit's 413 included;
    # the limit applies before routing, authentication or parsing.
    app.add_middleware(BodySizeLimit, limit=settings.max_request_bytes, setting="EDGEFLEET_MAX_REQUEST_BYTES",
                       routes=upload_limits)
    app.add_middleware(SecurityHeaders)
