"""Representative inputs for every decision on the device: the operator's samples when given, otherwise synthetic
inputs that the model's own runtime actually runs (a ladder of sizes for dynamic dimensions, shared `dim_param`
names kept equal, plausible values for integer scalars), never only "every dynamic dimension = 1"."""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from protocol.errors import EdgeError
from targets.tensors import TensorSpec

if TYPE_CHECKING:
    import numpy as np

Inputs = dict[str, "np.ndarray"]

# Sizes tried for dynamic dimensions, smallest first; a size whose inputs would exceed MAX_ELEMENTS is skipped.
# First a typical size (images IMAGE_SIZE), then the ladder from 1 up.
LADDER = (1, 32, 64, 256, 512, 1024, 4000, 16000)
TYPICAL_SIZE = 32
MAX_ELEMENTS = 8 << 20
_BATCH_NAMES = re.compile(r"^(n|b|bs|batch.*|.*batch_?size.*|num_?batch.*)$", re.IGNORECASE)
_GENERIC_NAMES = re.compile(r"^(.*dynamic_?dimension.*|unk_*\d*|dim_?\d*|\?|-1|none)$", re.IGNORECASE)
IMAGE_SIZE = 224  # dynamic height/width of an image input start here
# then text lines (height x width): an OCR recognizer pools its height to 1 and runs on 48x320 or 32x320 lines
# only (PaddleOCR's v4 recognizer: ONNX Runtime also answers a 1x1 image, that OpenVINO's AvgPool refuses)
LINE_SHAPES = ((48, 320), (32, 320))
MIN_IMAGE = 32  # no rung feeds an image smaller than this: 1x1 pictures are no model's real input
_RATE_NAMES = re.compile(r"(^|_)(sr|sample_?rate|sampling_?rate|rate)($|_)", re.IGNORECASE)
_LENGTH_NAMES = re.compile(r"(len|length|lengths|size|count|num)", re.IGNORECASE)
_SAMPLE_KEY = re.compile(r"^sample(\d+)/(.+)$")


class SampleError(EdgeError, ValueError):
    """Sample inputs that cannot be read or do not fit the model; the message says which input and why."""

    code = "bad_samples"


@dataclass
class ProbeInputs:
    """The inputs a model's checks run on, and where they came from (shown in the status)."""

    sets: list[Inputs]
    source: str  # "samples" | "synthetic" | "none"
    note: str = ""
    tried: list[str] = field(default_factory=list)

    def describe(self) -> str:
        if self.source == "samples":  # counted as `edgectl models` and the converters count them: rows
            rows, count = sample_rows(self.sets), len(self.sets)
            batches = "" if rows == count else f" in {count} batch{'' if count == 1 else 'es'}"
            return f"{rows} sample{'' if rows == 1 else 's'}{batches} given with the model"
        if self.source == "synthetic":
            return f"synthetic inputs ({self.note})"
        return "no runnable inputs found" + (f" ({self.note})" if self.note else "")


def sample_rows(sets: list[Inputs]) -> int:
    """Samples as an operator (and converters.calibration) counts them: rows along the first axis, the fewest of a
    set's arrays (a file of x: 8x16 holds 8, which the trial runs as one batch); a set of scalars is one."""
    return sum(min((int(a.shape[0]) for a in s.values() if a.ndim), default=1) for s in sets)


# -- samples: files the operator gives, stored as one .npz --------------------------------------------------------


def pack_samples(sets: list[Inputs]) -> bytes:
    """One .npz holding every sample: array `sample{i}/{input name}`."""
    import numpy as np

    buf = io.BytesIO()
    named = {f"sample{i}/{name}": array for i, arrays in enumerate(sets) for name, array in arrays.items()}
    np.savez(buf, **named)  # type: ignore[arg-type]  # numpy's stub types **kwds as its bool option
    return buf.getvalue()


def unpack_samples(data: bytes | Path) -> list[Inputs]:
    """Inverse of pack_samples; SampleError when the file is not such an archive."""
    import numpy as np

    raw = Path(data).read_bytes() if isinstance(data, Path) else data
    try:
        archive = np.load(io.BytesIO(raw), allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise SampleError(f"samples are not a readable .npz archive: {exc}") from None
    sets: dict[int, Inputs] = {}
    for key in archive.files:
        match = _SAMPLE_KEY.match(key)
        if match is None:
            raise SampleError(f"sample archive holds {key!r}; expected 'sample<i>/<input name>'")
        sets.setdefault(int(match.group(1)), {})[match.group(2)] = archive[key]
    return [sets[i] for i in sorted(sets)]


def read_sample_sets(raw: bytes, filename: str = "") -> list[Inputs]:
    """Every sample in a file: a packed archive of several (`edgectl capture`: arrays `sample<i>/<input>`), or the
    one of read_sample_file."""
    if raw[:2] == b"PK" and _is_packed(raw):
        return unpack_samples(raw)
    return [read_sample_file(raw, filename)]


def _is_packed(raw: bytes) -> bool:
    import zipfile

    try:
        names = zipfile.ZipFile(io.BytesIO(raw)).namelist()
    except zipfile.BadZipFile:
        return False
    return bool(names) and all(_SAMPLE_KEY.match(n.removesuffix(".npy")) for n in names)


def read_sample_file(raw: bytes, filename: str = "") -> Inputs:
    """One sample from what an operator has: .npz (an array per input name), .npy (a single-input model; the name is
    filled in later) or a v2 JSON request body."""
    import numpy as np

    if raw[:1] in (b"{", b"[") or filename.endswith(".json"):
        return _from_v2_json(raw)
    try:
        loaded = np.load(io.BytesIO(raw), allow_pickle=False)
    except (OSError, ValueError) as exc:
        # numpy reads any other file as a pickle and offers `allow_pickle=`: not advice for an operator
        why = "" if "pickle" in str(exc) else f" ({' '.join(str(exc).split())})"
        raise SampleError(
            f"not a .npz, .npy or v2 JSON file{why}; save samples with numpy.savez (arrays by input name)"
        ) from None
    if isinstance(loaded, np.ndarray):
        return {"": loaded}
    return {key: loaded[key] for key in loaded.files}


def _from_v2_json(raw: bytes) -> Inputs:
    import json

    import numpy as np

    from protocol.tensors import V2_TO_NUMPY

    try:
        body = json.loads(raw)
        arrays = {}
        for tensor in body["inputs"]:
            dtype = V2_TO_NUMPY[tensor["datatype"]]
            arrays[tensor["name"]] = np.asarray(tensor["data"], dtype=dtype).reshape(tensor["shape"])
        return arrays
    except (ValueError, KeyError, TypeError) as exc:
        raise SampleError(f"not a v2 inference request body ({type(exc).__name__}: {exc})") from None


def fit_samples(specs: list[TensorSpec], sets: list[Inputs]) -> list[Inputs]:
    """Name a lone .npy after the model's single input and cast to its dtypes; SampleError on anything else."""
    import numpy as np

    from protocol.tensors import InputError
    from targets.tensors import check_inputs

    fitted = []
    for i, arrays in enumerate(sets):
        if set(arrays) == {""}:
            if len(specs) != 1:
                raise SampleError(f"sample {i} is a single .npy but the model takes {len(specs)} inputs: use .npz")
            arrays = {specs[0].name: arrays[""]}
        wanted = {s.name: s for s in specs}
        cast = {
            n: np.asarray(a).astype(wanted[n].numpy_dtype, copy=False) if n in wanted else a for n, a in arrays.items()
        }
        try:
            check_inputs(specs, cast)
        except InputError as exc:
            raise SampleError(f"sample {i}: {exc}") from None
        fitted.append(cast)
    return fitted


# -- synthetic inputs that run ----------------------------------------------------------------------------------------


def _is_batch(spec: TensorSpec, axis: int) -> bool:
    """A batch dimension: named so, or the first of a tensor of rank 3+ whose name says nothing ('DynamicDimension.0',
    'unk__12', none)."""
    name = spec.dim_names[axis] if axis < len(spec.dim_names) else None
    if name and _BATCH_NAMES.match(name):
        return True
    return axis == 0 and len(spec.shape) >= 3 and (not name or bool(_GENERIC_NAMES.match(name)))


def _image_axis(spec: TensorSpec, axis: int) -> int | None:
    """0 (height) or 1 (width) for a spatial dimension of an NCHW/NHWC image (1 or 3 channels), else None: such
    models pool and stride, and a tiny image is neither runnable everywhere nor what they are timed on."""
    if len(spec.shape) != 4 or spec.datatype not in ("FP32", "FP16", "UINT8"):
        return None
    if spec.shape[1] in (1, 3):
        return axis - 2 if axis in (2, 3) else None
    return axis - 1 if spec.shape[3] in (1, 3) and axis in (1, 2) else None


def _rungs(specs: list[TensorSpec]) -> list[tuple[int, int | tuple[int, int]]]:
    """(size, image size) tried in turn: the typical sizes, text lines where an image's height and width are both
    dynamic, then the ladder (images never under MIN_IMAGE)."""
    lines = any(
        _image_axis(s, a) is not None and s.shape[a] < 0 and s.shape[b] < 0
        for s in specs for a, b in ((1, 2), (2, 3)) if len(s.shape) == 4
    )  # fmt: skip
    rungs: list[tuple[int, int | tuple[int, int]]] = [(TYPICAL_SIZE, IMAGE_SIZE)]
    rungs += [(TYPICAL_SIZE, shape) for shape in LINE_SHAPES] if lines else []
    return rungs + [(s, max(s, MIN_IMAGE)) for s in LADDER]


def synthesize(
    specs: list[TensorSpec],
    size: int,
    hints: dict[str, list[int]] | None = None,
    seed: int = 0,
    image_size: int | tuple[int, int] | None = None,
    batch: int | None = None,
) -> Inputs:
    """Inputs for `specs` with every non-batch dynamic dimension `size` (the operator's shape hints win), equal
    sizes for dimensions that share a name, and plausible values for integer inputs. A batch dimension is 1; with
    `batch`, every dynamic first axis is a batch of that size (a caller that stacks samples along it). A dynamic
    image height/width is `image_size` ((height, width), or one size for both)."""
    import numpy as np

    image = (image_size, image_size) if isinstance(image_size, int) else image_size

    rng = np.random.default_rng(seed)
    hints = hints or {}
    named: dict[str, int] = {}
    arrays: Inputs = {}
    for spec in specs:
        shape = list(hints.get(spec.name) or [])
        if len(shape) != len(spec.shape):
            shape = []
            for axis, dim in enumerate(spec.shape):
                name = spec.dim_names[axis] if axis < len(spec.dim_names) else None
                if dim >= 0:
                    shape.append(dim)
                elif name and name in named:
                    shape.append(named[name])
                elif batch is not None and axis == 0:
                    shape.append(batch)
                elif _is_batch(spec, axis):
                    shape.append(1)
                else:
                    spatial = _image_axis(spec, axis)
                    shape.append(image[spatial] if image and spatial is not None else size)
                if name and dim < 0:
                    named.setdefault(name, shape[-1])
        arrays[spec.name] = _values(spec, tuple(shape), size, rng)
    return arrays


def _values(spec: TensorSpec, shape: tuple[int, ...], size: int, rng: Any) -> Any:
    import numpy as np

    dtype = np.dtype(spec.numpy_dtype)
    if dtype.kind == "f":
        return (0.5 * rng.standard_normal(shape)).astype(dtype)
    if dtype.kind == "b":
        return np.ones(shape, dtype=bool)
    if _RATE_NAMES.search(spec.name):
        return np.full(shape, 16000, dtype=dtype)  # audio models check their sample rate
    if _LENGTH_NAMES.search(spec.name):
        return np.full(shape, size, dtype=dtype)  # lengths of the sequences in the other inputs
    if dtype == np.uint8:
        return rng.integers(0, 256, shape).astype(dtype)  # image bytes
    return rng.integers(0, 2, shape).astype(dtype)  # ids, masks and flags: small valid indices


def _elements(arrays: Inputs) -> int:
    return sum(int(a.size) for a in arrays.values())


def find_runnable(
    specs: list[TensorSpec],
    run: Callable[[Inputs], Any],
    hints: dict[str, list[int]] | None = None,
    deadline_s: float = 20.0,
    count: int = 1,
    batch: int | None = None,
) -> tuple[ProbeInputs, Any]:
    """Climb the ladder of sizes until `run` (the reference runtime) accepts the inputs; return them with its
    outputs, or ProbeInputs(source="none") with what each size gave. With `count`, more sets of that size follow
    the first (each its own seed), as many as fit in MAX_ELEMENTS together; `batch` as in synthesize."""
    import time

    started = time.monotonic()
    tried: list[str] = []
    has_dynamic = any(d < 0 for s in specs for d in s.shape) and not hints
    rungs = _rungs(specs) if has_dynamic else [(1, 1)]
    for size, image_size in rungs:
        arrays = synthesize(specs, size, hints, image_size=image_size, batch=batch)
        if _elements(arrays) > MAX_ELEMENTS:
            break

        try:
            outputs = run(arrays)
        except Exception as exc:  # any runtime failure means: try a larger size
            tried.append(f"size {size}{_images(specs, image_size)}: {_first_line(exc)}")
            if time.monotonic() - started > deadline_s:
                break
            continue
        note = (
            f"dynamic dimensions {size}{_images(specs, image_size)}"
            if has_dynamic
            else ("shape hints" if hints else "static shapes")
        )
        more = min(count, MAX_ELEMENTS // max(1, _elements(arrays))) - 1
        sets = [arrays] + [synthesize(specs, size, hints, seed, image_size, batch) for seed in range(1, 1 + more)]
        return ProbeInputs(sets, "synthetic", note, tried), outputs
    return ProbeInputs([], "none", tried[-1] if tried else "", tried), None


def _images(specs: list[TensorSpec], image_size: int | tuple[int, int]) -> str:
    """', images HxW' where an input is an image with a dynamic height or width, else ''."""
    if not any(_image_axis(s, a) is not None and d < 0 for s in specs for a, d in enumerate(s.shape)):
        return ""
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    return f", images {height}x{width}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]
