"""Nothing left behind: third-party tools that write into the operator's current directory are kept from it.

ONNX Runtime's symbolic shape inference saves the model it could not finish as `sym_shape_infer_temp.onnx` plus a
`<uuid>.data` of its weights in the current directory (a debugging aid) before it raises; the quantization
pre-processing then falls back to ONNX's shape inference, and the files stayed behind (10 MB for PaddleOCR's
recognizer). The converters' own scratch files live in the session's temporary directory, removed on success,
failure and Ctrl-C (converters.session.Session.close in a `finally`)."""

from __future__ import annotations

import logging
import threading
from types import ModuleType
from typing import Any

log = logging.getLogger("converters")

_lock = threading.Lock()


class _NoDebugSave(ModuleType):
    """The `onnx` module as ORT's symbolic shape inference sees it: every attribute onnx's own, but save_model, which
    it calls only to leave its partial model in the current directory, does nothing."""

    def __init__(self, onnx: ModuleType) -> None:
        super().__init__(onnx.__name__)
        self._onnx = onnx

    def __getattr__(self, name: str) -> Any:
        return getattr(self._onnx, name)

    def save_model(self, *args: Any, **kwargs: Any) -> None:
        path = args[1] if len(args) > 1 else kwargs.get("f")
        log.info("ORT symbolic shape inference's debug save to %s skipped (it would land in the current directory)",
                 path)  # fmt: skip


def keep_ort_out_of_cwd() -> None:
    """Route ORT's symbolic shape inference's debug save nowhere (idempotent, thread-safe; that module only)."""
    try:
        from onnxruntime.tools import symbolic_shape_infer
    except ImportError:
        return
    with _lock:
        current = getattr(symbolic_shape_infer, "onnx", None)
        if isinstance(current, ModuleType) and not isinstance(current, _NoDebugSave):
            symbolic_shape_infer.onnx = _NoDebugSave(current)
