"""Tensor descriptions shared by every backend and the inference API, in Open Inference Protocol (v2) terms; the
wire codec itself lives with the contract (protocol/tensors.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from protocol.tensors import V2_TO_NUMPY, InputError, v2_datatype

if TYPE_CHECKING:
    import numpy as np

__all__ = ["TensorSpec", "check_inputs"]


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output. Dynamic dimensions are -1."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    dim_names: tuple[str | None, ...] = field(default=())

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    @property
    def numpy_dtype(self) -> str:
        return V2_TO_NUMPY[self.datatype]

    def shape_matches(self, shape: tuple[int, ...]) -> bool:
        if len(shape) != len(self.shape):
            return False
        return all(want < 0 or want == got for want, got in zip(self.shape, shape))  # lengths checked above


def check_inputs(specs: list[TensorSpec], arrays: dict[str, np.ndarray]) -> None:
    """Raise InputError naming the first mismatch in names, datatypes or shapes."""
    expected = {s.name: s for s in specs}
    missing = [n for n in expected if n not in arrays]
    unknown = [n for n in arrays if n not in expected]
    if unknown:
        raise InputError(f"unknown input(s) {unknown}; the model takes {sorted(expected)}")
    if missing:
        raise InputError(f"missing input(s) {missing}; the model takes {sorted(expected)}")
    for name, array in arrays.items():
        spec = expected[name]
        got = v2_datatype(array.dtype)
        if got != spec.datatype:
            raise InputError(f"input {name!r}: datatype {got}, expected {spec.datatype}")
        if not spec.shape_matches(tuple(array.shape)):
            raise InputError(f"input {name!r}: shape {list(array.shape)}, expected {list(spec.shape)} (-1 = any)")
