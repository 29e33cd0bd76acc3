"""What every builder of one conversion run shares (the prepared float model, its data, scratch space), and the
error a builder raises when its variant cannot be built."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from protocol.errors import EdgeError

if TYPE_CHECKING:
    from converters.calibration import Calibration
    from converters.evidence import Thresholds


class ConversionError(EdgeError, RuntimeError):
    """A variant could not be built; the message is the operator-facing reason (naming the op when one is to blame)."""

    code = "conversion_failed"


@dataclass
class Job:
    """The prepared float model and its data, shared by the builders of one run (and their cached work)."""

    source: Path  # the float ONNX model after the common fixes
    input_names: list[str]
    output_names: list[str]
    input_ranks: dict[str, int]
    calibration: Calibration
    batch: int
    work: Path
    options: dict[str, Any]
    ops: set[str]
    cache: dict[str, Any] = field(default_factory=dict)
    # failed metrics of a candidate ONNX model against the float original on the calibration data (ONNX Runtime);
    # lets a builder search its own knob (the pruned sparsity) without touching the validation data
    judge: Callable[[Path], list[str]] | None = None
    thresholds: Thresholds | None = None  # the bar the variant being built is judged against
    details: dict[str, Any] = field(default_factory=dict)  # what the builder did, for the report (mixed precision)

    def samples(self, limit: int | None = None) -> list[dict]:
        return self.calibration.batches(self.batch, limit)


# builder(job, out, fixes) -> the built file; it appends to `fixes` what it did to the model
Builder = Callable[[Job, Path, list[str]], Path]
