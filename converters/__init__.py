"""Model optimization on the operator side (quantization, format conversion, pruning), each with a report.

Entry points: `convert(model, variant, calibration, out_dir)` -> ConversionResult, `convert_many(...)` for several
variants sharing one prepared model, and `VARIANTS`, the table of what can be built.
"""

from converters.calibration import Calibration, CalibrationError, load_calibration
from converters.core import ConversionResult, Thresholds, convert, convert_many, parse_variants
from converters.variants import VARIANTS, ConversionError

__all__ = [
    "VARIANTS",
    "Calibration",
    "CalibrationError",
    "ConversionError",
    "ConversionResult",
    "Thresholds",
    "convert",
    "convert_many",
    "load_calibration",
    "parse_variants",
]
