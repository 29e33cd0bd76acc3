"""The controller's HTTP API (FastAPI; schema at /openapi.json): the app composed of the token check, the one error
mapping and the routers in controller/routes. edgectl is its main client."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse

from controller import __version__
from controller.api.auth import TokenAuth
from controller.api.guard import JsonBodyLimit, RequestGuard, default_allowed_hosts
from controller.api.routes import all_routers
from controller.api.routes.artifacts import router as artifacts_router
from controller.api.routes.docs import router as docs_router
from controller.api.state import AppState
from controller.db.database import Database
from controller.errors import error_body, http_status
from controller.fleet.deployments import Deployments
from controller.fleet.link import Fleet
from controller.registry.artifacts import ArtifactStore
from controller.registry.calibration import MAX_CALIBRATION_BYTES, CalibrationStore
from controller.registry.models import MAX_UPLOAD_BYTES, Registry
from controller.registry.optimizer import Optimizer
from controller.rollouts.service import Rollouts
from protocol import MAX_SAMPLES_BYTES
from protocol.errors import EdgeError


async def edge_error(request: Request, exc: Exception) -> JSONResponse:
    """Any EdgeError a route raises: its code's status, `{"error": {"code", "message"}}`."""
    assert isinstance(exc, EdgeError)
    return JSONResponse(status_code=http_status(exc), content=error_body(exc.code, exc.message))


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's own HTTPExceptions (e.g. a body it cannot parse), in the same shape with the code `error`."""
    assert isinstance(exc, HTTPException)
    return JSONResponse(status_code=exc.status_code, content=error_body("error", str(exc.detail)))


def create_app(
    db: Database,
    artifacts: ArtifactStore,
    fleet: Fleet,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
    metrics_max_devices: int = 1000,
    token: str | None = None,
    work_dir: Path | None = None,
    read_token: str | None = None,
    allowed_hosts: frozenset[str] | None = None,
    rollouts: Rollouts | None = None,
) -> FastAPI:
    """The API over these stores: the request guard (Host, Origin, Content-Type, body limits), the token check
    (with `token` and/or `read_token`), the error mapping, and every router."""
    app = FastAPI(
        title="edge-controller",
        version=__version__,
        description="Model registry, device registry and deployments for an edge fleet.",
        docs_url=None,  # served by controller/api/routes/docs.py with local assets (works offline)
    )
    limits = {"model": max_upload_bytes, "calibration": MAX_CALIBRATION_BYTES, "samples": MAX_SAMPLES_BYTES}
    hosts = allowed_hosts if allowed_hosts is not None else default_allowed_hosts("127.0.0.1")
    # the last added runs first: guard, then the token, then the JSON body read within its limit
    app.add_middleware(JsonBodyLimit, upload_limits=limits)
    if token or read_token:
        app.add_middleware(TokenAuth, token=token, read_token=read_token)
    app.add_middleware(RequestGuard, allowed_hosts=hosts, upload_limits=limits)
    app.add_exception_handler(EdgeError, edge_error)
    app.add_exception_handler(HTTPException, http_error)
    calibration = CalibrationStore((work_dir or artifacts.root.parent) / "calibration")
    state = AppState(
        db=db,
        artifacts=artifacts,
        fleet=fleet,
        registry=Registry(db, artifacts, max_upload_bytes),
        calibration=calibration,
        optimizer=Optimizer(db, artifacts, calibration),
        deployments=Deployments(db, fleet),
        rollouts=rollouts or Rollouts(db, Deployments(db, fleet)),  # without a driver: actions and views only
        metrics_max_devices=metrics_max_devices,
    )
    for router in all_routers(state):
        app.include_router(router)
    app.include_router(docs_router(app.title))
    app.include_router(artifacts_router(state))  # open to devices: the sha256 is the capability (auth.py)
    return app
