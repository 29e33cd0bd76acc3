"""The controller's HTTP API (FastAPI; schema at /openapi.json). edgectl is its main client."""

from __future__ import annotations

import hmac
import re
import threading
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from pydantic import BaseModel, Field

from controller import __version__
from controller.artifacts import ArtifactStore
from controller.db import Conflict, Database, ModelRow, VariantRow
from controller.fleet import DeviceUnreachable, Fleet
from controller.inspect import InvalidModel, inspect_model
from controller.metrics import render as render_metrics
from controller.samples_api import samples_router
from protocol import DEVICE_ID_PATTERN, MODEL_NAME_PATTERN, valid_device_id

_MODEL_NAME_RE = re.compile(MODEL_NAME_PATTERN)
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+\-]{0,63}$")
_DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
STATIC = Path(__file__).parent / "static"


def parse_since(value: str | None, now: float | None = None, default_s: float = 3600.0) -> float:
    """`10m`, `2h`, `30s`, `1d` (that long ago) or epoch seconds; ValueError otherwise."""
    now = time.time() if now is None else now
    if not value:
        return now - default_s
    match = _DURATION_RE.match(value.strip())
    if match:
        return now - float(match.group(1)) * _UNITS[match.group(2)]
    return float(value)


class DeployRequest(BaseModel):
    model: str = Field(pattern=MODEL_NAME_PATTERN)
    version: str | None = Field(default=None, description="Default: the newest version")
    devices: list[str] = Field(min_length=1, max_length=10_000)
    backend: str | None = Field(default=None, description="Force this backend on the devices")
    variants: list[str] | None = Field(
        default=None, max_length=16, description="Optimized variants to ship with it (default: every passing one)"
    )
    force: bool = Field(default=False, description="Deploy variants below the accuracy threshold too")


class RollbackRequest(BaseModel):
    model: str | None = Field(default=None, description="Default: the device's only model")
    to: str | None = Field(default=None, description="Default: the version the device reports as previous")


class OptimizeRequest(BaseModel):
    variants: list[str] = Field(min_length=1, max_length=16, description="Variant names, or ['auto']")
    devices: list[str] = Field(default_factory=list, max_length=10_000, description="Targets (for 'auto')")
    sparsity: float | None = Field(
        default=None, gt=0, lt=1, description="Weights zeroed by `pruned`; none: the highest that keeps agreement"
    )
    min_top1: float = Field(default=0.99, ge=0, le=1)
    min_cosine: float = Field(default=0.99, ge=-1, le=1)
    rebuild: bool = Field(default=False, description="Convert again even where a variant is registered")


# `--optimize auto`: the variants that suit each runtime a device reports (hardware.runtimes), kept only where the
# variant's format is what that runtime loads.
AUTO_VARIANTS: dict[str, tuple[str, ...]] = {
    "onnxruntime": ("int8-static", "fp16"),
    "openvino": ("openvino", "openvino-int8"),
    "litert": ("tflite-int8",),
    "tflite_runtime": ("tflite-int8",),
}
RUNTIME_FORMATS = {"onnxruntime": "onnx", "openvino": "openvino", "litert": "tflite", "tflite_runtime": "tflite"}
OPEN_PATHS = frozenset({"/api/v1/health", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc", "/"})


class TokenAuth:
    """ASGI middleware: every path but OPEN_PATHS and /static/ needs `Authorization: Bearer TOKEN`."""

    def __init__(self, app, token: str) -> None:
        self.app = app
        self.token = token.encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or scope["path"].startswith("/static/"):
            return await self.app(scope, receive, send)
        header = dict(scope.get("headers") or []).get(b"authorization", b"")
        scheme, _, given = header.partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self.token):
            return await self.app(scope, receive, send)
        if not header:
            message = (
                "this controller requires an API token: send the header 'Authorization: Bearer TOKEN' "
                "(edgectl: --token or EDGECTL_TOKEN)"
            )
        else:
            message = "the API token was not accepted: 'Authorization: Bearer TOKEN' does not match the controller's"
        response = JSONResponse(
            status_code=401,
            content={"error": {"code": "unauthorized", "message": message}},
            headers={"WWW-Authenticate": "Bearer"},
        )
        await response(scope, receive, send)


def variant_view(row: VariantRow, full: bool = False) -> dict[str, Any]:
    """A variant as edgectl shows it: pass/fail, size, and why it failed."""
    report = row.report or {}
    agreement = report.get("agreement") or {}
    view = {
        "variant": row.variant,
        "sha256": row.sha256,
        "size": row.size,
        "format": row.format,
        "ok": row.ok,
        "passed": row.passed,
        "failure": None if row.passed else row.failure(),
        "size_ratio": report.get("size_ratio"),
        "speedup": report.get("speedup"),
        "top1": agreement.get("top1"),
        "cosine": agreement.get("cosine"),
        "created_at": row.created_at,
    }
    if full:
        view["report"] = report
    return view


class InferRequest(BaseModel):
    model: str = Field(pattern=MODEL_NAME_PATTERN)
    inputs: dict[str, Any] = Field(description="name -> {datatype, shape, b64}")
    timeout: float = Field(default=10.0, gt=0, le=300)


def problem(status: int, code: str, message: str) -> HTTPException:
    return HTTPException(status_code=status, detail={"code": code, "message": message})


def device_view(row: dict[str, Any]) -> dict[str, Any]:
    """The public shape of a device (edgectl devices --json)."""
    models = [
        {
            "name": m.get("name"),
            "version": m.get("version"),
            "sha256": m.get("sha256"),
            "backend": m.get("backend"),
            "state": m.get("state"),
            "progress": m.get("progress"),
            "reason": m.get("reason"),
            "serving": m.get("serving"),
            "previous": m.get("previous"),
            "selection": m.get("selection"),
            "failover": m.get("failover"),
        }
        for m in row.get("state") or []
    ]
    return {
        "id": row["id"],
        "online": row["online"],
        "hardware": row["hardware"],
        "agent_version": row["agent_version"],
        "api_url": row["api_url"],
        "last_seen": row["last_seen"],
        "first_seen": row["first_seen"],
        "generation": row["generation"],
        "models": models,
    }


def create_app(
    db: Database,
    artifacts: ArtifactStore,
    fleet: Fleet,
    max_upload_bytes: int = 4 << 30,
    metrics_max_devices: int = 1000,
    token: str | None = None,
    work_dir: Path | None = None,
) -> FastAPI:
    app = FastAPI(
        title="edge-controller",
        version=__version__,
        description="Model registry, device registry and deployments for an edge fleet.",
    )
    if token:
        app.add_middleware(TokenAuth, token=token)
    app.include_router(samples_router(db, artifacts))
    calibration_dir = (work_dir or artifacts.root.parent) / "calibration"
    convert_lock = threading.Lock()  # conversions are CPU-heavy: one at a time

    @app.exception_handler(HTTPException)
    async def _errors(request: Request, exc: HTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, dict) else {"code": "error", "message": str(exc.detail)}
        return JSONResponse(status_code=exc.status_code, content={"error": detail})

    @app.get("/api/v1/health")
    def health() -> dict[str, Any]:
        return {"ok": True, "version": __version__, "broker_connected": fleet.connected, "time": time.time()}

    # -- models --------------------------------------------------------------------------------------------------

    @app.post("/api/v1/models/{name}", status_code=201)
    async def upload_model(
        name: str,
        request: Request,
        version: str | None = Query(default=None, description="Default: next integer version"),
        filename: str = Query(default="model.onnx"),
    ) -> dict[str, Any]:
        """Upload a model file as the raw request body; it is hashed, checked and registered."""
        if not _MODEL_NAME_RE.match(name):
            raise problem(400, "bad_name", f"model name {name!r}: use letters, digits, '_', '-', '.' (max 128)")
        if version is not None and not _VERSION_RE.match(version):
            raise problem(400, "bad_version", f"version {version!r}: use letters, digits, '_', '-', '.', '+'")
        tmp = artifacts.begin()
        import hashlib

        h, size = hashlib.sha256(), 0
        with open(tmp, "wb") as f:
            async for block in request.stream():
                size += len(block)
                if size > max_upload_bytes:
                    f.close()
                    tmp.unlink(missing_ok=True)
                    raise problem(413, "too_large", f"model exceeds the {max_upload_bytes >> 20} MiB upload limit")
                h.update(block)
                f.write(block)
        sha256 = h.hexdigest()
        try:
            model_format, info = await run_in_threadpool(inspect_model, tmp, filename)
        except InvalidModel as exc:
            tmp.unlink(missing_ok=True)
            raise problem(400, "invalid_model", f"{filename}: {exc}") from None
        existing = db.find_model_by_sha(name, sha256)
        if existing and version in (None, existing.version):
            tmp.unlink(missing_ok=True)
            return {**existing.as_dict(), "created": False}
        artifacts.commit(tmp, sha256)
        row = ModelRow(
            name=name,
            version=version or db.next_version(name),
            sha256=sha256,
            size=size,
            format=model_format,
            filename=filename,
            info=info,
            created_at=time.time(),
        )
        try:
            row = db.add_model(row)
        except Conflict as exc:
            raise problem(409, "version_exists", str(exc)) from None
        return {**row.as_dict(), "created": True}

    @app.get("/api/v1/models")
    def list_models() -> list[dict[str, Any]]:
        """Every registered version, each with its optimized variants (pass/fail, size)."""
        by_version: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for v in db.list_variants():
            by_version.setdefault((v.model_name, v.version), []).append(variant_view(v))
        return [m.as_dict() | {"variants": by_version.get((m.name, m.version), [])} for m in db.list_models()]

    def find_model(name: str, version: str | None) -> ModelRow:
        row = db.get_model(name, version)
        if row is None:
            known = sorted({m.name for m in db.list_models()})
            what = f"model {name!r}" + (f" version {version!r}" if version else "")
            raise problem(404, "unknown_model", f"{what} is not registered; registered models: {known}")
        return row

    @app.get("/api/v1/models/{name}/versions/{version}/variants")
    def list_model_variants(name: str, version: str) -> list[dict[str, Any]]:
        """The optimized variants of one version, each with its full conversion report."""
        find_model(name, version)
        return [variant_view(v, full=True) for v in db.list_variants(name, version)]

    @app.post("/api/v1/models/{name}/versions/{version}/calibration")
    async def upload_calibration(name: str, version: str, request: Request) -> dict[str, Any]:
        """Calibration data (.npz keyed by input name, or .npy for a single input) as the raw body; used by the
        next optimize of this version."""
        find_model(name, version)
        if not _VERSION_RE.match(version):
            raise problem(400, "bad_version", f"version {version!r}: use letters, digits, '_', '-', '.', '+'")
        data = bytearray()
        async for block in request.stream():
            data += block
            if len(data) > (1 << 30):
                raise problem(413, "too_large", "calibration data exceeds the 1024 MiB limit")
        suffix = ".npz" if bytes(data[:4]) == b"PK\x03\x04" else ".npy"
        import io

        import numpy as np

        try:
            loaded = np.load(io.BytesIO(bytes(data)), allow_pickle=False)
            arrays = {k: loaded[k].shape for k in loaded.files} if suffix == ".npz" else {"": loaded.shape}
        except (OSError, ValueError) as exc:
            raise problem(400, "bad_calibration", f"calibration data is not a .npz/.npy file: {exc}") from None
        target = calibration_dir / name / version
        target.mkdir(parents=True, exist_ok=True)
        for old in target.glob("calibration.*"):
            old.unlink()
        (target / f"calibration{suffix}").write_bytes(bytes(data))
        return {
            "model": name,
            "version": version,
            "bytes": len(data),
            "arrays": {k: list(v) for k, v in arrays.items()},
        }

    def auto_variants(device_ids: list[str]) -> list[str]:
        from converters import VARIANTS

        if not device_ids:
            raise problem(400, "auto_needs_devices", "--optimize auto picks variants by the target devices: name them")
        names: list[str] = []
        for device_id in device_ids:
            device = find_device(device_id)
            runtimes = (device.get("hardware") or {}).get("runtimes") or {}
            for runtime, version in runtimes.items():
                if version is None:
                    continue
                for variant in AUTO_VARIANTS.get(runtime, ()):
                    if VARIANTS[variant].format == RUNTIME_FORMATS[runtime] and variant not in names:
                        names.append(variant)
        if not names:
            raise problem(409, "no_variants", f"no device of {device_ids} reports a runtime a variant suits")
        return names

    def run_conversions(model: ModelRow, names: list[str], body: OptimizeRequest) -> list[VariantRow]:
        import hashlib
        import shutil
        import uuid

        from converters import CalibrationError, ConversionError, Thresholds, convert_many

        existing = {v.variant: v for v in db.list_variants(model.name, model.version)}
        todo = [n for n in names if body.rebuild or n not in existing or not existing[n].ok]
        calibration = next(iter(sorted((calibration_dir / model.name / model.version).glob("calibration.*"))), None)
        out_dir = artifacts.incoming / f"convert-{uuid.uuid4().hex}"
        options: dict[str, Any] = {} if body.sparsity is None else {"sparsity": body.sparsity}
        try:
            if todo:
                with convert_lock:
                    results = convert_many(
                        artifacts.path(model.sha256),
                        todo,
                        calibration,
                        out_dir,
                        Thresholds(top1=body.min_top1, cosine=body.min_cosine),
                        options,
                    )
                for result in results:
                    sha256, size = None, 0
                    if result.ok and result.path:
                        built = Path(result.path)
                        h = hashlib.sha256()
                        with open(built, "rb") as f:
                            while block := f.read(1 << 20):
                                h.update(block)
                        sha256, size = h.hexdigest(), built.stat().st_size
                        artifacts.commit(built, sha256)
                    report = result.as_dict() | {"path": None, "model": f"{model.name}@{model.version}"}
                    report["calibration"] = "uploaded" if calibration else result.calibration
                    existing[result.variant] = db.put_variant(
                        VariantRow(
                            model_name=model.name,
                            version=model.version,
                            variant=result.variant,
                            sha256=sha256,
                            size=size,
                            format=result.format or "onnx",
                            report=report,
                            passed=bool(result.passed and sha256),
                            created_at=time.time(),
                        )
                    )
        except (ConversionError, CalibrationError) as exc:
            raise problem(400, "cannot_convert", str(exc)) from None
        finally:
            shutil.rmtree(out_dir, ignore_errors=True)
        return [existing[n] for n in names]

    @app.post("/api/v1/models/{name}/versions/{version}/optimize")
    async def optimize(name: str, version: str, body: OptimizeRequest) -> dict[str, Any]:
        """Build optimized variants of an ONNX version with converters (synchronously: seconds to minutes), store
        each content-addressed with its report. `variants: ['auto']` picks them by the devices' runtimes."""
        model = find_model(name, version)
        if model.format != "onnx":
            raise problem(400, "not_onnx", f"{name}@{version} is {model.format}; variants are built from ONNX models")
        try:
            import converters  # noqa: F401
        except ImportError as exc:
            raise problem(501, "no_converters", f"this controller cannot convert models ({exc})") from None
        names = auto_variants(body.devices) if body.variants == ["auto"] else list(dict.fromkeys(body.variants))
        rows = await run_in_threadpool(run_conversions, model, names, body)
        return {"model": name, "version": version, "variants": [variant_view(v, full=True) for v in rows]}

    @app.get("/api/v1/models/{name}")
    def get_model(name: str, version: str | None = None) -> dict[str, Any]:
        row = find_model(name, version)
        return row.as_dict() | {"variants": [variant_view(v) for v in db.list_variants(row.name, row.version)]}

    # -- devices and deployments ---------------------------------------------------------------------------------

    @app.get("/api/v1/devices")
    def list_devices() -> list[dict[str, Any]]:
        return [device_view(d) for d in db.list_devices()]

    def find_device(device_id: str) -> dict[str, Any]:
        row = db.get_device(device_id) if valid_device_id(device_id) else None
        if row is None:
            known = [d["id"] for d in db.list_devices()]
            raise problem(404, "unknown_device", f"unknown device {device_id!r}; known devices: {known or 'none yet'}")
        return row

    @app.get("/api/v1/devices/{device_id}")
    def get_device(device_id: str) -> dict[str, Any]:
        """The device, with its newest telemetry (latency, resources, drift flags) under `telemetry`."""
        view = device_view(find_device(device_id))
        view["telemetry"] = fleet.telemetry.device_summary(device_id)
        return view

    # -- telemetry -----------------------------------------------------------------------------------------------

    @app.get("/api/v1/devices/{device_id}/telemetry")
    def device_telemetry(
        device_id: str,
        since: str | None = Query(default=None, description="`10m`, `2h`, `1d` ago, or epoch seconds (default 1h)"),
        limit: int = Query(default=10_000, ge=1, le=100_000),
    ) -> dict[str, Any]:
        """The device's telemetry samples since a time, oldest first, each with p50/p95/p99 and requests/s."""
        find_device(device_id)
        try:
            start = parse_since(since)
        except ValueError:
            raise problem(400, "bad_since", f"since={since!r}: use 10m, 2h, 1d or epoch seconds") from None
        return {
            "device": device_id,
            "since": start,
            "samples": fleet.telemetry.history(device_id, start, limit),
            "latest": fleet.telemetry.device_summary(device_id),
        }

    @app.get("/api/v1/telemetry")
    def fleet_telemetry() -> list[dict[str, Any]]:
        """Every device with its models and newest telemetry: what `edgectl top` and the dashboard show."""
        summaries = fleet.telemetry.fleet_summary()
        return [{**device_view(d), "telemetry": summaries.get(d["id"])} for d in db.list_devices()]

    @app.post("/api/v1/devices/{device_id}/drift/reset")
    def reset_drift(device_id: str, model: str | None = None) -> dict[str, Any]:
        """Forget the drift baseline (the next window becomes the new one)."""
        find_device(device_id)
        return {"device": device_id, "model": model, "removed": fleet.telemetry.reset_baseline(device_id, model)}

    @app.get("/metrics", response_class=PlainTextResponse)
    def metrics() -> PlainTextResponse:
        """Prometheus exposition format; labels and their bounds are documented in controller/metrics.py."""
        text = render_metrics(db.list_devices(), fleet.telemetry, max_devices=metrics_max_devices)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    # -- dashboard -----------------------------------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    def dashboard() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> FileResponse:
        path = STATIC / name
        if "/" in name or name.startswith(".") or not path.is_file():
            raise problem(404, "not_found", f"no static file {name!r}")
        media = {".js": "text/javascript", ".css": "text/css"}.get(path.suffix, "application/octet-stream")
        return FileResponse(path, media_type=media)

    @app.post("/api/v1/deployments")
    def deploy(body: DeployRequest) -> dict[str, Any]:
        """Make a model version the desired one on each listed device (all devices must be known)."""
        bad = [d for d in body.devices if not re.match(DEVICE_ID_PATTERN, d)]
        unknown = sorted(set(body.devices) - db.known_devices([d for d in body.devices if d not in bad]))
        if unknown:
            known = [d["id"] for d in db.list_devices()]
            raise problem(
                404,
                "unknown_device",
                f"unknown device(s) {unknown}; a device is known once its agent has connected. "
                f"Known devices: {known or 'none yet'}",
            )
        model = db.get_model(body.model, body.version)
        if model is None:
            raise problem(404, "unknown_model", f"model {body.model!r} version {body.version or 'latest'} not found")
        variant_names = choose_variants(model, body.variants, body.force)
        result = []
        for device_id in body.devices:
            generation = db.set_deployment(device_id, model, body.backend, variant_names)
            fleet.publish_desired(device_id)
            result.append({"device": device_id, "generation": generation})
        return {
            "model": model.name,
            "version": model.version,
            "sha256": model.sha256,
            "variants": variant_names,
            "deployments": result,
        }

    def choose_variants(model: ModelRow, wanted: list[str] | None, force: bool) -> list[str]:
        """The variants to ship: every passing one by default; asked-for ones must be built, and pass unless forced."""
        rows = {v.variant: v for v in db.list_variants(model.name, model.version)}
        if wanted is None:
            return [n for n, v in rows.items() if v.passed]
        wanted = list(dict.fromkeys(wanted))
        where = f"{model.name}@{model.version}"
        unknown = [n for n in wanted if n not in rows]
        if unknown:
            raise problem(
                404, "unknown_variant", f"{where} has no variant(s) {unknown}; registered: {sorted(rows) or 'none'}"
            )
        broken = [f"{n} {rows[n].failure()}" for n in wanted if not rows[n].ok]
        if broken:
            raise problem(409, "variant_not_built", f"cannot deploy {where}: " + "; ".join(broken))
        below = [f"{n}: {rows[n].failure()}" for n in wanted if not rows[n].passed]
        if below and not force:
            raise problem(
                409,
                "variant_below_threshold",
                f"refusing to deploy {where}: variant(s) below the accuracy threshold: "
                + "; ".join(below)
                + " (use --force to deploy them anyway)",
            )
        return wanted

    @app.post("/api/v1/devices/{device_id}/rollback")
    def rollback(device_id: str, body: RollbackRequest | None = None) -> dict[str, Any]:
        """Deploy an earlier version again: by default the one the device reports as `previous` (still on its disk,
        so the swap is immediate), or `to` a registered version."""
        body = body or RollbackRequest()
        device = find_device(device_id)
        reported = {m.get("name"): m for m in device.get("state") or []}
        deployed = {m.name: (m, backend) for m, backend in db.desired_models(device_id)}
        names = sorted(set(reported) | set(deployed))
        name = body.model
        if name is None:
            if len(names) != 1:
                raise problem(
                    400,
                    "which_model",
                    f"device {device_id} has {len(names)} models {names}: say which one to roll back (--model)"
                    if names
                    else f"device {device_id} has no model to roll back",
                )
            name = names[0]
        elif name not in names:
            raise problem(404, "unknown_model", f"device {device_id} has no model {name!r}; its models: {names}")
        current, backend = deployed.get(name, (None, None))
        version = body.to
        if version is None:
            previous = (reported.get(name) or {}).get("previous")
            if not previous:
                raise problem(
                    409,
                    "no_previous",
                    f"device {device_id} reports no previous version of {name} to roll back to; "
                    "name a registered version with --to",
                )
            version = previous["version"]
        target = db.get_model(name, version)
        if target is None:
            known = [m.version for m in db.list_models() if m.name == name]
            raise problem(404, "unknown_version", f"{name} version {version!r} is not registered; registered: {known}")
        generation = db.set_deployment(device_id, target, backend, choose_variants(target, None, False))
        fleet.publish_desired(device_id)
        return {
            "device": device_id,
            "model": name,
            "version": target.version,
            "sha256": target.sha256,
            "from": current.version if current else None,
            "generation": generation,
        }

    @app.post("/api/v1/devices/{device_id}/infer")
    async def infer(device_id: str, body: InferRequest) -> dict[str, Any]:
        """Run one inference on the device over MQTT request/response."""
        row = find_device(device_id)
        if not row["online"]:
            raise problem(503, "device_offline", f"device {device_id} is offline (last seen {row['last_seen']:.0f})")
        try:
            response = await run_in_threadpool(
                fleet.call, device_id, "infer", {"model": body.model, "inputs": body.inputs}, body.timeout
            )
        except DeviceUnreachable as exc:
            raise problem(504, "device_unreachable", str(exc)) from None
        if not response.ok:
            err = response.error
            status = {"bad_input": 400, "not_found": 404}.get(err.code if err else "", 502)
            raise problem(status, err.code if err else "device_error", err.message if err else "device error")
        return response.result or {}

    return app
