"""The HTTP API application."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from cloud import __version__
from cloud.api.routes import deployments, devices, fleet, models, packages
from cloud.crud import Conflict, NotFound

if TYPE_CHECKING:
    from cloud.server import ControlPlane


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error["loc"] if p != "body") or "body"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


def create_app(plane: ControlPlane) -> FastAPI:
    app = FastAPI(title="EdgeFleet control plane", version=__version__)
    app.state.plane = plane

    @app.exception_handler(NotFound)
    async def _not_found(request: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse(status_code=404, content={"detail": str(exc)})

    @app.exception_handler(Conflict)
    async def _conflict(request: Request, exc: Conflict) -> JSONResponse:
        return JSONResponse(status_code=409, content={"detail": str(exc)})

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

    for module in (devices, models, packages, deployments, fleet):
        app.include_router(module.router, prefix="/api/v1")
    return app
