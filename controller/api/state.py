"""What the HTTP routes share, built once per app and passed to each router (no module-level state)."""

from __future__ import annotations

from dataclasses import dataclass

from controller.db.database import Database
from controller.fleet.deployments import Deployments
from controller.fleet.link import Fleet
from controller.registry.artifacts import ArtifactStore
from controller.registry.calibration import CalibrationStore
from controller.registry.models import Registry
from controller.registry.optimizer import Optimizer
from controller.rollouts.service import Rollouts


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
    rollouts: Rollouts
    metrics_max_devices: int = 1000
