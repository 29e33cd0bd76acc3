"""The public JSON shapes of registry rows (what edgectl's --json and the dashboard read)."""

from __future__ import annotations

from typing import Any

from controller.db.database import ModelRow, VariantRow

DEVICE_MODEL_FIELDS = (
    "name", "version", "sha256", "backend", "state", "progress", "reason",
    "serving", "previous", "selection", "failover", "shadow", "attempt",
)  # fmt: skip
DEVICE_FIELDS = ("id", "online", "hardware", "agent_version", "api_url", "last_seen", "first_seen", "generation")


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


def model_view(row: ModelRow, variants: list[VariantRow]) -> dict[str, Any]:
    """A registered version with its optimized variants (pass/fail, size)."""
    return row.as_dict() | {"variants": [variant_view(v) for v in variants]}


def device_view(row: dict[str, Any]) -> dict[str, Any]:
    """The public shape of a device (edgectl devices --json)."""
    models = [{key: m.get(key) for key in DEVICE_MODEL_FIELDS} for m in row.get("state") or []]
    return {key: row[key] for key in DEVICE_FIELDS} | {"models": models}
