"""HTTP routes for a version's representative inputs: samples (raw .npz/.npy/v2 JSON bodies) and shape hints."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from controller.api.state import AppState
from controller.registry import samples
from controller.registry.uploads import receive_bytes
from protocol import MAX_SAMPLES_BYTES


class ShapesRequest(BaseModel):
    shapes: list[str] = Field(default_factory=list, max_length=64, description="NAME=DIMxDIM..., e.g. audio=1x16000")


class TaskRequest(BaseModel):
    task: str | None = Field(default=None, description="classifier, regression, or null: detected from the shape")


class PinRequest(BaseModel):
    pinned: bool = Field(description="true: the devices never unload the version to make room for others")


def router(state: AppState) -> APIRouter:
    router = APIRouter()

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
        samples.version_info(state.db, name, version)
        too_large = f"a sample exceeds the {MAX_SAMPLES_BYTES >> 20} MiB limit"
        data = await receive_bytes(request.stream(), MAX_SAMPLES_BYTES, too_large)
        sample = (filename, data)
        entry = await run_in_threadpool(samples.add_sample, state.db, state.artifacts, name, version, sample, replace)
        return {"model": name, "version": version, "samples": entry}

    @router.put("/api/v1/models/{name}/versions/{version}/input-shapes")
    def set_input_shapes(name: str, version: str, body: ShapesRequest) -> dict[str, Any]:
        """Shapes for the synthetic inputs devices try when no samples are given (replaces earlier hints)."""
        shapes = samples.set_input_shapes(state.db, name, version, body.shapes)
        return {"model": name, "version": version, "input_shapes": shapes}

    @router.put("/api/v1/models/{name}/versions/{version}/task")
    def set_task(name: str, version: str, body: TaskRequest) -> dict[str, Any]:
        """What the version's outputs are (`edgectl push --task`): carried to the devices, read by the quality
        statistics (a classifier whose output shape is ambiguous is still counted as one)."""
        return {"model": name, "version": version, "task": samples.set_task(state.db, name, version, body.task)}

    @router.put("/api/v1/models/{name}/versions/{version}/pin")
    def set_pinned(name: str, version: str, body: PinRequest) -> dict[str, Any]:
        """Pin the version in the devices' memory (`edgectl push --pin`): carried to them in the desired state's
        entry; their memory budget never unloads it."""
        return {"model": name, "version": version, "pinned": samples.set_pinned(state.db, name, version, body.pinned)}

    return router
