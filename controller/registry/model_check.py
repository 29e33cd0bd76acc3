"""The model check of an upload (inspect.py: parse, validate, describe) in a child process with a memory limit, so a
large or hostile model costs the API process nothing: the check of a 146 MiB ONNX file took the controller from 52
to 352 MiB when it ran inside it. The child's address space is capped (RLIMIT_AS) before it imports a parser."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

from controller.registry.inspect import InvalidModel

log = logging.getLogger(__name__)

BASE_BYTES = 1 << 30  # the interpreter, numpy, onnx or openvino mapped (an ONNX check peaks ~180 MiB of it)
PER_MODEL_BYTE = 4  # the parsers hold about twice the file at their peak; room for twice that
CHECK_TIMEOUT_S = 600.0
INVALID, NO_MEMORY = 2, 3  # the child's exit codes: the model is not valid; it needed more memory than allowed


def memory_limit(size: int) -> int:
    return BASE_BYTES + PER_MODEL_BYTE * size


def check_model(path: Path, filename: str) -> tuple[str, dict[str, Any]]:
    """(format, info) for an uploaded file, checked in a child process; InvalidModel naming why it was refused."""
    limit = memory_limit(path.stat().st_size)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "controller.registry.model_check", str(limit), str(path.absolute()), filename],
            capture_output=True, text=True, timeout=CHECK_TIMEOUT_S, cwd=str(Path(__file__).resolve().parents[2]),
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        raise InvalidModel(f"checking it took over {CHECK_TIMEOUT_S:.0f}s; upload a smaller or simpler model") from None
    if proc.returncode == 0:
        answer = json.loads(proc.stdout)
        return answer["format"], answer["info"]
    last = (proc.stderr.strip().splitlines() or [""])[-1]
    if proc.returncode == INVALID:
        raise InvalidModel(last)
    if proc.returncode == NO_MEMORY or proc.returncode < 0:
        log.warning("the model check of %s ended with %s (%s)", filename, proc.returncode, last[:200])
        raise InvalidModel(
            f"checking it needed more than the {limit >> 20} MiB the model check may use; "
            "upload a smaller model or one the parser can read"
        )
    raise InvalidModel(f"the model check failed: {last[:300]}")


def _main(argv: list[str]) -> int:
    import resource

    limit = int(argv[0])
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))  # before a parser is imported
    from controller.registry.inspect import inspect_model

    try:
        model_format, info = inspect_model(Path(argv[1]), argv[2])
    except InvalidModel as exc:
        print(str(exc), file=sys.stderr)
        return INVALID
    except MemoryError:
        print("out of memory", file=sys.stderr)
        return NO_MEMORY
    print(json.dumps({"format": model_format, "info": info}))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
