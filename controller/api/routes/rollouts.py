"""HTTP routes for fleet rollouts: plan (dry run) or start one, read its status and events, and the operator's
actions (pause, resume, next, abort: the emergency stop)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from controller.api.state import AppState
from controller.rollouts.actions import RolloutRequest
from controller.rollouts.plan import DEFAULT_WAVES
from protocol import MODEL_NAME_PATTERN
from protocol.errors import EdgeError
from protocol.labels import LabelError, parse_selector


class StartRequest(BaseModel):
    model: str = Field(pattern=MODEL_NAME_PATTERN)
    version: str = Field(max_length=64)
    name: str = Field(default="", max_length=128)
    select: list[str] = Field(default_factory=list, max_length=32, description="KEY=VALUE, all must hold")
    waves: str = Field(default=DEFAULT_WAVES, max_length=200, description="cumulative counts or shares")
    bake_s: float = Field(default=600.0, ge=0, le=7 * 86400)
    activate_timeout_s: float = Field(default=600.0, gt=0, le=86400)
    max_p95_ratio: float = Field(default=1.10, gt=0)
    max_error_delta: float = Field(default=0.5, ge=0, le=100, description="percentage points")
    min_agreement: float | None = Field(default=None, ge=0, le=1)
    no_new_drift: bool = Field(default=False, description="gate: no device's quality drifted from its previous version")
    min_requests: int = Field(default=200, ge=1)
    on_fail: Literal["halt", "revert-wave", "revert-all"] = "revert-wave"
    seed: int | None = None
    dry_run: bool = False
    size: int | None = Field(default=None, ge=0, description="dry run of an unregistered version: its size")
    format: Literal["onnx", "tflite", "openvino"] | None = None

    def request(self) -> RolloutRequest:
        try:
            selector = parse_selector(self.select)
        except LabelError as exc:
            raise EdgeError(str(exc), "invalid_label") from None
        fields = self.model_dump(exclude={"select", "dry_run"})
        return RolloutRequest(selector=selector, **fields)


def router(state: AppState) -> APIRouter:
    router = APIRouter()
    rollouts = state.rollouts

    @router.post("/api/v1/rollouts")
    def start(body: StartRequest) -> dict[str, Any]:
        """Start a rollout of a registered version to the selected devices in waves (the engine of the replica
        holding the rollouts lease drives it); with `dry_run` only its plan: waves per class, bytes to move,
        devices that cannot take the model, conflicts with other rollouts."""
        if body.dry_run:
            return {"dry_run": True, **rollouts.actions.plan(body.request())}
        return rollouts.status(rollouts.actions.start(body.request()))

    @router.get("/api/v1/rollouts")
    def list_rollouts() -> list[dict[str, Any]]:
        return rollouts.listed()

    @router.get("/api/v1/rollouts/{rollout_id}")
    def status(rollout_id: str) -> dict[str, Any]:
        """State, reason in one line, and each wave with its devices, state and the gates' figures per class."""
        return rollouts.status(rollout_id)

    @router.get("/api/v1/rollouts/{rollout_id}/events")
    def events(rollout_id: str, after: int = 0) -> list[dict[str, Any]]:
        """Every decision, append-only, with the figures it was made on."""
        return rollouts.events(rollout_id, after)

    @router.post("/api/v1/rollouts/{rollout_id}/{action}")
    async def act(rollout_id: str, action: Literal["pause", "resume", "next", "abort"]) -> dict[str, Any]:
        """pause, resume, next (promote the current wave by hand) or abort (revert every device that took it)."""
        await run_in_threadpool(getattr(rollouts.actions, action), rollout_id)
        return await run_in_threadpool(rollouts.status, rollout_id)

    return router
