"""Calibration data given for a model version (.npz keyed by input name, or .npy for one input): streamed to disk,
checked from the array headers alone (never decompressed here: a small .npz can unpack to gigabytes), and kept where
the version's next optimize finds it."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

from protocol.errors import EdgeError

MAX_CALIBRATION_BYTES = 1 << 30
MAX_CALIBRATION_UNPACKED = 4 << 30  # what the arrays of one .npz may unpack to (the optimizer loads them)
MAX_CALIBRATION_ARRAYS = 256
TOO_LARGE = f"calibration data exceeds the {MAX_CALIBRATION_BYTES >> 20} MiB limit"


def _bad(reason: str) -> EdgeError:
    return EdgeError(f"calibration data is not a .npz/.npy file: {reason}", code="bad_calibration")


def _header_shape(f) -> tuple[list[int], int]:
    """(shape, data bytes) from an open .npy stream's header; the data is not read."""
    import numpy as np

    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
    else:
        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    if dtype.hasobject:
        raise _bad("object arrays are not accepted")
    count = 1
    for d in shape:
        count *= d
    return list(shape), count * dtype.itemsize


def array_shapes_file(path: Path) -> dict[str, list[int]]:
    """The shape of each array of a .npz/.npy file from its headers, or bad_calibration."""
    try:
        if not zipfile.is_zipfile(path):
            with open(path, "rb") as f:
                shape, nbytes = _header_shape(f)
            if nbytes > path.stat().st_size:
                raise _bad(f"the header declares {nbytes} bytes of data; the file is shorter")
            return {"": shape}
        shapes: dict[str, list[int]] = {}
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            if len(members) > MAX_CALIBRATION_ARRAYS:
                raise _bad(f"{len(members)} arrays; at most {MAX_CALIBRATION_ARRAYS}")
            unpacked = sum(m.file_size for m in members)
            if unpacked > MAX_CALIBRATION_UNPACKED:
                raise _bad(f"its arrays unpack to {unpacked >> 20} MiB; at most {MAX_CALIBRATION_UNPACKED >> 20} MiB")
            for member in members:
                with archive.open(member) as f:
                    shapes[member.filename.removesuffix(".npy")] = _header_shape(f)[0]
        return shapes
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise _bad(str(exc)) from None


class CalibrationStore:
    """One calibration file per version, under `root/NAME/VERSION/calibration.{npz,npy}`."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def save(self, name: str, version: str, data: bytes) -> dict[str, list[int]]:
        """Check and store bytes (replacing earlier data for the version); the shape of each array."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".incoming-{os.getpid()}-{id(data)}"
        tmp.write_bytes(data)
        return self.save_file(name, version, tmp)

    def save_file(self, name: str, version: str, tmp: Path) -> dict[str, list[int]]:
        """Check and move an uploaded file into place (it is consumed either way); the shape of each array."""
        try:
            shapes = array_shapes_file(tmp)
            suffix = ".npz" if zipfile.is_zipfile(tmp) else ".npy"
            target = self.root / name / version
            target.mkdir(parents=True, exist_ok=True)
            for old in target.glob("calibration.*"):
                old.unlink()
            os.replace(tmp, target / f"calibration{suffix}")
        finally:
            tmp.unlink(missing_ok=True)
        return shapes

    def find(self, name: str, version: str) -> Path | None:
        """The version's calibration file, if one was given."""
        return next(iter(sorted((self.root / name / version).glob("calibration.*"))), None)
