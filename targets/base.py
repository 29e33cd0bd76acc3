"""The one interface every inference backend implements (load, describe, infer, close)."""

from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from pydantic import BaseModel, ConfigDict

from protocol.errors import EdgeError
from targets.tensors import TensorSpec

if TYPE_CHECKING:
    import numpy as np


class BackendError(EdgeError, RuntimeError):
    """A backend could not load or run a model; the message is the operator-facing reason."""

    code = "backend_error"


class BackendConfig(BaseModel):
    """Base of each backend's own validated options; `type` selects the backend."""

    model_config = ConfigDict(extra="forbid")
    type: str


class Backend(ABC):
    """A loaded model on one runtime. Heavy runtimes are imported inside `load`, never at module import."""

    type_key: ClassVar[str]
    config_class: ClassVar[type[BackendConfig]]
    formats: ClassVar[frozenset[str]]
    runtime_module: ClassVar[str]  # importable module that must exist for this backend to be a candidate

    def __init__(self, config: BackendConfig | None = None) -> None:
        self.config = config or self.config_class(type=self.type_key)
        self.inputs: list[TensorSpec] = []
        self.outputs: list[TensorSpec] = []

    @classmethod
    def installed(cls) -> bool:
        """Whether the runtime package is importable, without importing it."""
        return importlib.util.find_spec(cls.runtime_module) is not None

    @abstractmethod
    def load(self, path: Path, model_format: str) -> None:
        """Load the model file; raise BackendError with the reason on failure."""

    @abstractmethod
    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one inference on named arrays already checked against `inputs`."""

    @property
    def label(self) -> str:
        """Name shown in status: the backend, plus the device/provider it ended up on."""
        return self.type_key

    @property
    def precision(self) -> str:
        """What the arithmetic runs at: "full" (the model's own types) unless reduced precision was asked for."""
        return "full"

    @property
    def metadata(self) -> dict[str, object]:
        """Extra facts for the v2 model metadata endpoint (e.g. class labels of a rewritten ZipMap output)."""
        return {}

    def settle(self, timeout_s: float = 60.0) -> bool:
        """Wait for work the backend started in the background (OpenVINO compiling a static copy of a dynamic model),
        so a footprint read next holds it; True when there was some."""
        return False

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the runtime's resources."""
