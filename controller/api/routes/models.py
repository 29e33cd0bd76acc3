"""HTTP routes for the model registry: upload and list versions, their calibration data and optimized variants."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from controller.api.state import AppState
from controller.api.views import model_view, variant_view
from controller.db.database import VariantRow
from controller.registry.calibration import MAX_CALIBRATION_BYTES, TOO_LARGE
from controller.registry.models import check_version
from controller.registry.optimizer import ConvertOptions
from controller.registry.uploads import receive_file


class OptimizeRequest(BaseModel):
    variants: list[str] = Field(min_length=1, max_length=16, description="Variant names, or ['auto']")
    devices: list[str] = Field(default_factory=list, max_length=10_000, description="Targets (for 'auto')")
    sparsity: float | None = Field(
        default=None, gt=0, lt=1, description="Weights zeroed by `pruned`; none: the highest that keeps agreement"
    )
    min_top1: float = Field(default=0.99, ge=0, le=1)
    min_cosine: float = Field(default=0.99, ge=-1, le=1)
    rebuild: bool = Field(default=False, description="Convert again even where a variant is registered")

    def options(self) -> ConvertOptions:
        return ConvertOptions(self.sparsity, self.min_top1, self.min_cosine, self.rebuild)


def router(state: AppState) -> APIRouter:
    router = APIRouter()
    db, registry = state.db, state.registry

    @router.post("/api/v1/models/{name}", status_code=201)
    async def upload_model(
        name: str,
        request: Request,
        version: str | None = Query(default=None, description="Default: next integer version"),
        filename: str = Query(default="model.onnx"),
    ) -> dict[str, Any]:
        """Upload a model file as the raw request body; it is hashed, checked and registered."""
        received = await registry.receive(name, version, request.stream())
        row, created = await run_in_threadpool(registry.register, name, version, filename, received)
        return {**row.as_dict(), "created": created}

    @router.get("/api/v1/models")
    def list_models() -> list[dict[str, Any]]:
        """Every registered version, each with its optimized variants (pass/fail, size)."""
        by_version: dict[tuple[str, str], list[VariantRow]] = {}
        for v in db.list_variants():
            by_version.setdefault((v.model_name, v.version), []).append(v)
        return [model_view(m, by_version.get((m.name, m.version), [])) for m in db.list_models()]

    @router.get("/api/v1/models/{name}/versions/{version}/variants")
    def list_model_variants(name: str, version: str) -> list[dict[str, Any]]:
        """The optimized variants of one version, each with its full conversion report."""
        registry.find(name, version)
        return [variant_view(v, full=True) for v in db.list_variants(name, version)]

    @router.post("/api/v1/models/{name}/versions/{version}/calibration")
    async def upload_calibration(name: str, version: str, request: Request) -> dict[str, Any]:
        """Calibration data (.npz keyed by input name, or .npy for a single input) as the raw body; used by the
        next optimize of this version."""
        registry.find(name, version)
        check_version(version)
        received = await receive_file(request.stream(), state.artifacts.begin(), MAX_CALIBRATION_BYTES, TOO_LARGE)
        arrays = await run_in_threadpool(state.calibration.save_file, name, version, received.path)
        return {"model": name, "version": version, "bytes": received.size, "arrays": arrays}

    @router.post("/api/v1/models/{name}/versions/{version}/optimize")
    async def optimize(name: str, version: str, body: OptimizeRequest) -> dict[str, Any]:
        """Build optimized variants of an ONNX version with converters (synchronously: seconds to minutes), store
        each content-addressed with its report. `variants: ['auto']` picks them by the devices' runtimes."""
        model = registry.find(name, version)
        state.optimizer.check(model)
        names = state.optimizer.resolve(body.variants, body.devices)
        rows = await run_in_threadpool(state.optimizer.build, model, names, body.options())
        return {"model": name, "version": version, "variants": [variant_view(v, full=True) for v in rows]}

    @router.get("/api/v1/models/{name}")
    def get_model(name: str, version: str | None = None) -> dict[str, Any]:
        row = registry.find(name, version)
        return model_view(row, db.list_variants(row.name, row.version))

    return router
