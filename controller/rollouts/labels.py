"""Device labels as the controller keeps and reads them: measured ones derived from the hardware probe, the device's
own (from its presence), and operator labels stored here (`edgectl label`); a selector picks devices by them."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from controller.db.database import Database
from controller.db.devices import find_device
from controller.db.schema import device_labels
from protocol.errors import EdgeError
from protocol.labels import MAX_LABELS, LabelError, check_label, hardware_class, matches, measured_labels, own_labels


@dataclass(frozen=True)
class Labelled:
    """A device row with its labels: `labels` is what selectors match (measured < own < operator, though neither
    own nor operator labels may use a measured key), `hw_class` its hardware class."""

    row: dict[str, Any]
    measured: dict[str, str]
    own: dict[str, str]
    operator: dict[str, str]

    @property
    def id(self) -> str:
        return str(self.row["id"])

    @property
    def labels(self) -> dict[str, str]:
        return {**self.measured, **self.own, **self.operator}

    @property
    def hw_class(self) -> str:
        return hardware_class(self.measured)

    def view(self) -> dict[str, Any]:
        """The labels part of a device's public shape."""
        return {
            "labels": self.labels,
            "hardware_class": self.hw_class,
            "label_sources": {"measured": self.measured, "own": self.own, "operator": self.operator},
        }


def operator_labels(db: Database, device_id: str | None = None) -> dict[str, dict[str, str]]:
    """device id -> its operator labels (one device's, or every device's)."""
    query = sa.select(device_labels.c.device_id, device_labels.c.key, device_labels.c.value)
    if device_id is not None:
        query = query.where(device_labels.c.device_id == device_id)
    found: dict[str, dict[str, str]] = {}
    with db.engine.connect() as conn:
        for dev, key, value in conn.execute(query):
            found.setdefault(dev, {})[key] = value
    return found


def labelled(row: dict[str, Any], operator: Mapping[str, str] | None = None) -> Labelled:
    hardware = row.get("hardware") or {}
    return Labelled(row, measured_labels(hardware), own_labels(hardware), dict(operator or {}))


def device_labelled(db: Database, device_id: str) -> Labelled:
    """One known device with its labels (unknown_device otherwise)."""
    return labelled(find_device(db, device_id), operator_labels(db, device_id).get(device_id))


def all_labelled(db: Database) -> list[Labelled]:
    """Every known device with its labels (two queries, whatever the fleet's size)."""
    operator = operator_labels(db)
    return [labelled(row, operator.get(row["id"])) for row in db.list_devices()]


def select(db: Database, selector: Mapping[str, str]) -> list[Labelled]:
    """The devices every KEY=VALUE of the selector holds for, by id."""
    return [d for d in all_labelled(db) if matches(d.labels, selector)]


def set_labels(db: Database, device_id: str, changes: Mapping[str, str | None]) -> Labelled:
    """Set (or, for None, remove) operator labels on a known device; the device with its labels after."""
    row = find_device(db, device_id)
    try:
        for key, value in changes.items():
            check_label(key, value if value is not None else "x")
    except LabelError as exc:
        raise EdgeError(str(exc), code="invalid_label") from None
    now = time.time()
    with db.engine.begin() as conn:
        for key, value in changes.items():
            where = (device_labels.c.device_id == device_id) & (device_labels.c.key == key)
            conn.execute(device_labels.delete().where(where))
            if value is not None:
                conn.execute(device_labels.insert().values(device_id=device_id, key=key, value=value, updated_at=now))
        count = conn.execute(
            sa.select(sa.func.count()).select_from(device_labels).where(device_labels.c.device_id == device_id)
        ).scalar_one()
        if count > MAX_LABELS:
            raise EdgeError(f"{device_id} would have {count} operator labels; at most {MAX_LABELS}", "too_many_labels")
    return labelled(row, operator_labels(db, device_id).get(device_id))
