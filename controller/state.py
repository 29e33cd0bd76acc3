"""What the HTTP routes share, built once per app and passed to each router (no module-level state)."""

from __future__ import annotations

from dataclasses import dataclass

from controller.artifacts import ArtifactStore
from controller.calibration import CalibrationStore
from controller.db import Database
from controller.deployments import Deployments
from controller.fleet import Fleet
from controller.optimizer import Optimizer
from controller.registry import Registry


@dataclass(frozen=True)
class AppState:
    """The stores, the fleet and the domain services over them, with the settings the routes read."""

    db: Database
    artifacts: ArtifactStore
    fleet: Fleet
    registry: Registry
    calibration: CalibrationStore
    optimizer: Optimizer
    deployments: Deployments
    metrics_max_devices: int = 1000
