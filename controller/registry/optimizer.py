"""Optimized variants of a registered version: which to build (`auto`: by the devices' runtimes), building them with
converters one conversion at a time, and which of the built ones a deployment ships."""

from __future__ import annotations

import shutil
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from controller.db.database import Database, ModelRow, VariantRow
from controller.db.devices import find_device
from controller.registry.artifacts import ArtifactStore
from controller.registry.calibration import CalibrationStore
from protocol.errors import EdgeError
from protocol.files import sha256_file

if TYPE_CHECKING:
    from converters import ConversionResult

# `--optimize auto`: the variants that suit each runtime a device reports (hardware.runtimes), kept only where the
# variant's format is what that runtime loads.
AUTO_VARIANTS: dict[str, tuple[str, ...]] = {
    "onnxruntime": ("int8-static", "fp16"),
    "openvino": ("openvino", "openvino-int8"),
    "litert": ("tflite-int8",),
    "tflite_runtime": ("tflite-int8",),
}
RUNTIME_FORMATS = {"onnxruntime": "onnx", "openvino": "openvino", "litert": "tflite", "tflite_runtime": "tflite"}


@dataclass(frozen=True)
class ConvertOptions:
    """How to build: `sparsity` for `pruned` (None: the highest that keeps agreement), the accuracy thresholds, and
    whether to build again a variant already registered."""

    sparsity: float | None = None
    min_top1: float = 0.99
    min_cosine: float = 0.99
    rebuild: bool = False


def variants_for_runtimes(runtimes: dict[str, Any], formats: dict[str, str]) -> list[str]:
    """The AUTO_VARIANTS of each installed runtime (version not None) whose format (`formats`) that runtime loads."""
    names: list[str] = []
    for runtime, version in runtimes.items():
        if version is None:
            continue
        for variant in AUTO_VARIANTS.get(runtime, ()):
            if formats.get(variant) == RUNTIME_FORMATS[runtime] and variant not in names:
                names.append(variant)
    return names


def auto_variants(db: Database, device_ids: list[str]) -> list[str]:
    """The variants that suit the named devices' runtimes: auto_needs_devices, unknown_device or no_variants."""
    from converters import VARIANTS

    if not device_ids:
        raise EdgeError("--optimize auto picks variants by the target devices: name them", code="auto_needs_devices")
    formats = {name: spec.format for name, spec in VARIANTS.items()}
    names: list[str] = []
    for device_id in device_ids:
        runtimes = (find_device(db, device_id).get("hardware") or {}).get("runtimes") or {}
        names += [n for n in variants_for_runtimes(runtimes, formats) if n not in names]
    if not names:
        raise EdgeError(f"no device of {device_ids} reports a runtime a variant suits", code="no_variants")
    return names


def choose_variants(db: Database, model: ModelRow, wanted: list[str] | None, force: bool) -> list[str]:
    """The variants to ship: every passing one by default; asked-for ones must be built, and pass unless forced."""
    rows = {v.variant: v for v in db.list_variants(model.name, model.version)}
    if wanted is None:
        return [n for n, v in rows.items() if v.passed]
    wanted = list(dict.fromkeys(wanted))
    where = f"{model.name}@{model.version}"
    unknown = [n for n in wanted if n not in rows]
    if unknown:
        message = f"{where} has no variant(s) {', '.join(unknown)}; registered: {', '.join(sorted(rows)) or 'none'}"
        raise EdgeError(message, code="unknown_variant")
    broken = [f"{n} {rows[n].failure()}" for n in wanted if not rows[n].ok]
    if broken:
        raise EdgeError(f"cannot deploy {where}: " + "; ".join(broken), code="variant_not_built")
    below = [f"{n}: {rows[n].failure()}" for n in wanted if not rows[n].passed]
    if below and not force:
        message = (
            f"refusing to deploy {where}: variant(s) below the accuracy threshold: "
            + "; ".join(below)
            + " (use --force to deploy them anyway)"
        )
        raise EdgeError(message, code="variant_below_threshold")
    return wanted


class Optimizer:
    """Builds variants of registered versions into `artifacts` and records them in `db`."""

    def __init__(self, db: Database, artifacts: ArtifactStore, calibration: CalibrationStore) -> None:
        self.db = db
        self.artifacts = artifacts
        self.calibration = calibration
        self._lock = threading.Lock()  # conversions are CPU-heavy: one at a time

    def check(self, model: ModelRow) -> None:
        """not_onnx for a model variants cannot be built from, no_converters where converters is not installed."""
        if model.format != "onnx":
            message = f"{model.name}@{model.version} is {model.format}; variants are built from ONNX models"
            raise EdgeError(message, code="not_onnx")
        try:
            import converters  # noqa: F401
        except ImportError as exc:
            raise EdgeError(f"this controller cannot convert models ({exc})", code="no_converters") from None

    def resolve(self, variants: list[str], devices: list[str]) -> list[str]:
        """The names asked for, once each; `['auto']` picks them by the devices' runtimes."""
        return auto_variants(self.db, devices) if variants == ["auto"] else list(dict.fromkeys(variants))

    def build(self, model: ModelRow, names: list[str], options: ConvertOptions) -> list[VariantRow]:
        """Build the named variants not registered yet (or all, with `rebuild`); every named one, in order."""
        from converters import CalibrationError, ConversionError, Thresholds, convert_many

        existing = {v.variant: v for v in self.db.list_variants(model.name, model.version)}
        todo = [n for n in names if options.rebuild or n not in existing or not existing[n].ok]
        calibration = self.calibration.find(model.name, model.version)
        out_dir = self.artifacts.incoming / f"convert-{uuid.uuid4().hex}"
        extra: dict[str, Any] = {} if options.sparsity is None else {"sparsity": options.sparsity}
        thresholds = Thresholds(top1=options.min_top1, cosine=options.min_cosine)
        try:
            if todo:
                with self._lock:
                    results = convert_many(
                        self.artifacts.path(model.sha256), todo, calibration, out_dir, thresholds, extra
                    )
                for result in results:
                    existing[result.variant] = self._record(model, result, calibration)
        except (ConversionError, CalibrationError) as exc:
            raise EdgeError(str(exc), code="cannot_convert") from None
        finally:
            shutil.rmtree(out_dir, ignore_errors=True)
        return [existing[n] for n in names]

    def _record(self, model: ModelRow, result: ConversionResult, calibration: Path | None) -> VariantRow:
        """Store one conversion's output content-addressed and register it with its report."""
        sha256, size = None, 0
        if result.ok and result.path:
            built = Path(result.path)
            sha256, size = sha256_file(built), built.stat().st_size
            self.artifacts.commit(built, sha256)
        report = result.as_dict() | {"path": None, "model": f"{model.name}@{model.version}"}
        report["calibration"] = "uploaded" if calibration else result.calibration
        row = VariantRow(
            model_name=model.name,
            version=model.version,
            variant=result.variant,
            sha256=sha256,
            size=size,
            format=result.format or "onnx",
            report=report,
            passed=bool(result.passed and sha256),
            created_at=time.time(),
        )
        return self.db.put_variant(row)
