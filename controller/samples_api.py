"""HTTP routes for a version's representative inputs: samples (raw .npz/.npy/v2 JSON bodies) and shape hints."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from controller.artifacts import ArtifactStore
from controller.db import Database
from controller.samples import add_samples, parse_shape
from protocol import MAX_SAMPLES_BYTES
from targets.inputs import SampleError


class ShapesRequest(BaseModel):
    shapes: list[str] = Field(default_factory=list, max_length=64, description="NAME=DIMxDIM..., e.g. audio=1x16000")


def _problem(status: int, code: str, message: str) -> HTTPException:
    return HTTPException(status_code=status, detail={"code": code, "message": message})


def samples_router(db: Database, artifacts: ArtifactStore) -> APIRouter:
    router = APIRouter()

    def version_info(name: str, version: str) -> dict[str, Any]:
        row = db.get_model(name, version)
        if row is None:
            raise _problem(404, "unknown_model", f"model {name!r} version {version!r} is not registered")
        return dict(row.info or {})

    @router.post("/api/v1/models/{name}/versions/{version}/samples")
    async def upload_sample(
        name: str,
        version: str,
        request: Request,
        filename: str = Query(default="sample.npz", max_length=256),
        replace: bool = Query(default=False, description="Drop the samples given before"),
    ) -> dict[str, Any]:
        """One representative input (.npz keyed by input name, .npy for a one-input model, or a v2 JSON request
        body) as the raw body; it travels with the version to the devices and every decision there runs on it."""
        info = version_info(name, version)
        data = bytearray()
        async for block in request.stream():
            data += block
            if len(data) > MAX_SAMPLES_BYTES:
                raise _problem(413, "too_large", f"a sample exceeds the {MAX_SAMPLES_BYTES >> 20} MiB limit")
        try:
            entry = await run_in_threadpool(add_samples, artifacts, info, [(filename, bytes(data))], replace)
        except SampleError as exc:
            raise _problem(400, "bad_sample", f"{filename}: {exc}") from None
        db.update_model_info(name, version, {"samples": entry})
        return {"model": name, "version": version, "samples": entry}

    @router.put("/api/v1/models/{name}/versions/{version}/input-shapes")
    def set_input_shapes(name: str, version: str, body: ShapesRequest) -> dict[str, Any]:
        """Shapes for the synthetic inputs devices try when no samples are given (replaces earlier hints)."""
        info = version_info(name, version)
        try:
            shapes = dict(parse_shape(text) for text in body.shapes)
        except SampleError as exc:
            raise _problem(400, "bad_shape", str(exc)) from None
        declared = {d["name"] for d in info.get("inputs") or []}
        unknown = sorted(set(shapes) - declared) if declared else []
        if unknown:
            raise _problem(400, "bad_shape", f"unknown input(s) {unknown}; the model takes {sorted(declared)}")
        db.update_model_info(name, version, {"input_shapes": shapes})
        return {"model": name, "version": version, "input_shapes": shapes}

    return router
