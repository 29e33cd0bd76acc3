"""Model optimization on the operator side (quantization, format conversion, pruning), each with a report.

Entry points: `convert(model, variant, calibration, out_dir)` -> ConversionResult, `convert_many(...)` for several
variants sharing one prepared model, and `VARIANTS`, the registry of what can be built.
"""

from converters.calibration import Calibration, CalibrationError, load_calibration
from converters.core import convert, convert_many
from converters.evidence import Thresholds
from converters.job import ConversionError
from converters.report import ConversionResult
from converters.variants import VARIANTS, Variant, parse_variants

__all__ = [
    "VARIANTS",
    "Calibration",
    "CalibrationError",
    "ConversionError",
    "ConversionResult",
    "Thresholds",
    "Variant",
    "convert",
    "convert_many",
    "load_calibration",
    "parse_variants",
]
