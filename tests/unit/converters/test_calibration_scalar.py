"""A model with a scalar input (silero_vad's `sr`) given calibration files: refused with a one-line reason naming
the input, not an IndexError (issue 28: the synthetic refusal tells the operator to pass --calibration)."""

from __future__ import annotations

import numpy as np
import pytest

from converters.calibration import CalibrationError, load_calibration
from targets.tensors import TensorSpec


def test_a_scalar_input_in_calibration_files_is_refused_naming_it(tmp_path):
    specs = [TensorSpec("input", "FP32", (-1, -1)), TensorSpec("sr", "INT64", ())]
    path = tmp_path / "cal.npz"
    np.savez(path, input=np.zeros((1, 576), np.float32), sr=np.array(16000, np.int64))
    with pytest.raises(CalibrationError, match="input 'sr' is a scalar"):
        load_calibration(path, specs)


def test_inputs_with_a_sample_axis_still_load(tmp_path):
    specs = [TensorSpec("input", "FP32", (-1, 576))]
    path = tmp_path / "cal.npz"
    np.savez(path, input=np.zeros((3, 576), np.float32))
    assert len(load_calibration(path, specs)) == 3
