"""Calibration data given for a model version (.npz keyed by input name, or .npy for one input): checked, and kept
where the version's next optimize finds it."""

from __future__ import annotations

import io
from pathlib import Path

from protocol.errors import EdgeError

MAX_CALIBRATION_BYTES = 1 << 30
TOO_LARGE = f"calibration data exceeds the {MAX_CALIBRATION_BYTES >> 20} MiB limit"


def array_shapes(data: bytes, suffix: str) -> dict[str, list[int]]:
    """The shape of each array in .npz/.npy bytes, or bad_calibration."""
    import numpy as np

    try:
        loaded = np.load(io.BytesIO(data), allow_pickle=False)
        shapes = {k: loaded[k].shape for k in loaded.files} if suffix == ".npz" else {"": loaded.shape}
    except (OSError, ValueError) as exc:
        raise EdgeError(f"calibration data is not a .npz/.npy file: {exc}", code="bad_calibration") from None
    return {k: list(v) for k, v in shapes.items()}


class CalibrationStore:
    """One calibration file per version, under `root/NAME/VERSION/calibration.{npz,npy}`."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def save(self, name: str, version: str, data: bytes) -> dict[str, list[int]]:
        """Check and store the data (replacing earlier data for the version); the shape of each array."""
        suffix = ".npz" if data[:4] == b"PK\x03\x04" else ".npy"
        shapes = array_shapes(data, suffix)
        target = self.root / name / version
        target.mkdir(parents=True, exist_ok=True)
        for old in target.glob("calibration.*"):
            old.unlink()
        (target / f"calibration{suffix}").write_bytes(data)
        return shapes

    def find(self, name: str, version: str) -> Path | None:
        """The version's calibration file, if one was given."""
        return next(iter(sorted((self.root / name / version).glob("calibration.*"))), None)
