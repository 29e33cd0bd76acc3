"""Calibration / validation data: .npz, .npy or a directory of them, keyed by input name; synthetic when absent."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from protocol.errors import EdgeError
from targets.inputs import Inputs, find_runnable
from targets.tensors import TensorSpec

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger("converters")

SYNTHETIC_WARNING = (
    "no calibration data given: calibrating and validating on SYNTHETIC random inputs. "
    "Accuracy on real data is UNPROVEN; pass --calibration with real samples (.npz/.npy keyed by input name)."
)


class CalibrationError(EdgeError, ValueError):
    """Calibration data that does not fit the model: the message says what was expected."""

    code = "bad_calibration"


@dataclass
class Calibration:
    """Samples stacked along axis 0 for each model input; `source` says where they came from."""

    arrays: dict[str, np.ndarray]
    source: str  # file path, or "synthetic"
    notes: list[str] = field(default_factory=list)

    @property
    def synthetic(self) -> bool:
        return self.source == "synthetic"

    def __len__(self) -> int:
        return min(len(a) for a in self.arrays.values()) if self.arrays else 0

    def batches(self, batch: int = 1, limit: int | None = None) -> list[dict[str, np.ndarray]]:
        """The samples as model-ready dicts of `batch` rows each (at most `limit` of them)."""
        count = len(self) // batch
        if limit is not None:
            count = min(count, limit)
        return [{k: a[i * batch : (i + 1) * batch] for k, a in self.arrays.items()} for i in range(count)]


_SAMPLE_KEY = re.compile(r"^sample\d+/")


def _read(path: Path) -> dict[str, np.ndarray] | np.ndarray:
    import numpy as np

    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False)
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    raise CalibrationError(f"{path}: calibration data must be .npz, .npy or a directory of them")


def _collect(path: Path, specs: list[TensorSpec]) -> dict[str, list[np.ndarray]]:
    names = [s.name for s in specs]
    files = sorted(p for p in path.iterdir() if p.suffix in (".npz", ".npy")) if path.is_dir() else [path]
    if not files:
        raise CalibrationError(f"{path}: no .npz or .npy files in the directory")
    parts: dict[str, list[np.ndarray]] = {}
    for file in files:
        loaded = _read(file)
        if isinstance(loaded, dict):
            for key, array in loaded.items():  # `<input>`, or `sample<i>/<input>` (edgectl capture)
                parts.setdefault(_SAMPLE_KEY.sub("", key), []).append(array)
        elif file.stem in names:  # directory of <input name>.npy
            parts.setdefault(file.stem, []).append(loaded)
        elif len(names) == 1:
            parts.setdefault(names[0], []).append(loaded)
        else:
            raise CalibrationError(
                f"{file}: a .npy file needs a one-input model or a name matching an input; the model takes {names}"
            )
    return parts


def load_calibration(
    path: Path | str | None,
    specs: list[TensorSpec],
    synthetic_samples: int = 64,
    run: Callable[[Inputs], Any] | None = None,
) -> Calibration:
    """Load and check calibration data against the model inputs; synthetic inputs (loudly) when `path` is None, of
    a size the reference runtime `run` accepts."""
    import numpy as np

    if path is None:
        return synthetic_calibration(specs, synthetic_samples, run)
    path = Path(path)
    if not path.exists():
        raise CalibrationError(f"calibration data {path} does not exist")
    parts = _collect(path, specs)
    expected = {s.name: s for s in specs}
    unknown = sorted(set(parts) - set(expected))
    missing = sorted(set(expected) - set(parts))
    if unknown or missing:
        raise CalibrationError(
            f"{path}: calibration keys {sorted(parts)} do not match the model inputs {sorted(expected)}"
            + (f" (missing {missing})" if missing else "")
            + (f" (unknown {unknown})" if unknown else "")
        )
    arrays, notes = {}, []
    for name, chunks in parts.items():
        spec = expected[name]
        if not spec.shape:  # silero_vad's `sr`: samples stack along axis 0, which a scalar input has not
            raise CalibrationError(
                f"{path}: input {name!r} is a scalar and calibration data stacks samples along axis 0: a model with "
                "a scalar input cannot be calibrated from files yet"
            )
        fixed = []
        for chunk in chunks:
            if chunk.ndim == len(spec.shape) - 1:  # one sample without its batch axis
                chunk = chunk[None]
            if not spec.shape_matches((spec.shape[0], *chunk.shape[1:])) or chunk.ndim != len(spec.shape):
                raise CalibrationError(
                    f"{path}: input {name!r} samples have shape {list(chunk.shape)}, "
                    f"the model expects {list(spec.shape)} (-1 = any; axis 0 stacks samples)"
                )
            fixed.append(chunk)
        array = np.concatenate(fixed)
        if array.dtype != np.dtype(spec.numpy_dtype):
            notes.append(f"calibration input {name!r} cast from {array.dtype} to {spec.numpy_dtype}")
            array = array.astype(spec.numpy_dtype)
        arrays[name] = np.ascontiguousarray(array)
    counts = {len(a) for a in arrays.values()}
    if len(counts) > 1:
        notes.append(f"inputs have different sample counts {sorted(counts)}: using the first {min(counts)}")
    if min(counts) == 0:
        raise CalibrationError(f"{path}: no samples")
    return Calibration(arrays, str(path), notes)


def synthetic_calibration(
    specs: list[TensorSpec], samples: int, run: Callable[[Inputs], Any] | None = None
) -> Calibration:
    """Samples from the generator devices decide and time on (targets.inputs): dynamic dimensions at the first size
    of its ladder that `run` (the reference runtime; None: the first size) accepts, one sample per row of axis 0."""
    import numpy as np

    log.warning(SYNTHETIC_WARNING)
    probe, _ = find_runnable(specs, run or (lambda inputs: None), count=samples, batch=1)
    if not probe.sets:
        raise CalibrationError(
            f"no synthetic inputs run on the model ({probe.note}); pass --calibration with real samples"
        )
    log.info("synthetic calibration: %d sample(s), %s", len(probe.sets), probe.describe())
    arrays = {s.name: np.concatenate([x[s.name] for x in probe.sets]) for s in specs}
    return Calibration(arrays, "synthetic", [SYNTHETIC_WARNING])
