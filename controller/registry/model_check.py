"""The model check of an upload (inspect.py: parse, validate, describe) in a child process with a memory limit, so a
large or hostile model costs the API process nothing: the check of a 146 MiB ONNX file took the controller from 52
to 352 MiB when it ran inside it. The child's address space is capped (RLIMIT_AS) before it parses the model.

A spare child waits with the parsers imported (once `enable_spare()`, the served controller): a fresh Python spent
~0.9 s of a 10 MB upload's ~1 s importing the protocol package and onnx before a ~0.06 s check (issue 29). Each child
still checks one upload and exits; the next spare starts after the job and imports at low priority."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from controller.registry.inspect import InvalidModel

log = logging.getLogger(__name__)

BASE_BYTES = 1 << 30  # the interpreter, numpy, onnx or openvino mapped (an ONNX check peaks ~180 MiB of it)
PER_MODEL_BYTE = 4  # the parsers hold about twice the file at their peak; room for twice that
CHECK_TIMEOUT_S = 600.0
INVALID, NO_MEMORY = 2, 3  # the child's exit codes: the model is not valid; it needed more memory than allowed
SPARE = "--spare"  # the child's argument: import the parsers, then read its job (a JSON list of argv) from stdin
SPARE_NICE = 10  # a spare's imports (not its check) never take the CPU from the API or a deployment beside it
ROOT = str(Path(__file__).resolve().parents[2])


class _Spares:
    """The one spare child waiting for a job, if any; off until enable()."""

    def __init__(self) -> None:
        self.enabled = False
        self.proc: subprocess.Popen[str] | None = None
        self.lock = threading.Lock()

    def take(self) -> subprocess.Popen[str] | None:
        """The waiting spare (None if there is none, or it died while waiting)."""
        with self.lock:
            proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is not None:
            log.warning("the spare model check ended while waiting (status %s); a fresh one checks", proc.returncode)
            return None
        return proc

    def prestart(self) -> None:
        with self.lock:
            if not self.enabled or (self.proc is not None and self.proc.poll() is None):
                return
            try:
                self.proc = subprocess.Popen(
                    [*_command(), SPARE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                    text=True, cwd=ROOT,
                )  # fmt: skip
            except OSError as exc:
                log.warning("cannot start a spare model check: %s", exc)
                self.proc = None

    def end(self) -> None:
        with self.lock:
            self.enabled = False
            proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            try:
                proc.communicate("", timeout=5)  # EOF: it exits without checking anything
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()


_spares = _Spares()


def enable_spare() -> None:
    """Keep a spare child with the parsers imported from now on; the first one starts at once."""
    _spares.enabled = True
    _spares.prestart()


def disable_spare() -> None:
    """No more spares; the waiting one exits."""
    _spares.end()


def memory_limit(size: int) -> int:
    return BASE_BYTES + PER_MODEL_BYTE * size


def _command() -> list[str]:
    return [sys.executable, "-m", "controller.registry.model_check"]


def check_model(path: Path, filename: str) -> tuple[str, dict[str, Any]]:
    """(format, info) for an uploaded file, checked in a child process (the spare when one waits); InvalidModel
    naming why it was refused."""
    limit = memory_limit(path.stat().st_size)
    job = [str(limit), str(path.absolute()), filename]
    spare = _spares.take()
    try:
        if spare is not None:
            out, err = spare.communicate(json.dumps(job) + "\n", timeout=CHECK_TIMEOUT_S)
            code = spare.returncode
        else:
            command = [*_command(), *job]
            proc = subprocess.run(command, capture_output=True, text=True, timeout=CHECK_TIMEOUT_S, cwd=ROOT)
            out, err, code = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired:
        if spare is not None:
            spare.kill()
            spare.communicate()
        raise InvalidModel(f"checking it took over {CHECK_TIMEOUT_S:.0f}s; upload a smaller or simpler model") from None
    finally:
        _spares.prestart()  # after the job, not beside it
    return _answer(code, out, err, limit, filename)


def _answer(code: int, out: str, err: str, limit: int, filename: str) -> tuple[str, dict[str, Any]]:
    if code == 0:
        answer = json.loads(out)
        return answer["format"], answer["info"]
    last = (err.strip().splitlines() or [""])[-1]
    if code == INVALID:
        raise InvalidModel(last)
    if code == NO_MEMORY or code < 0:
        log.warning("the model check of %s ended with %s (%s)", filename, code, last[:200])
        raise InvalidModel(
            f"checking it needed more than the {limit >> 20} MiB the model check may use; "
            "upload a smaller model or one the parser can read"
        )
    raise InvalidModel(f"the model check failed: {last[:300]}")


def _preload() -> None:
    """A spare's imports, on a thread of low priority (Linux nice values are per thread): what inspect_model will use
    (a missing parser fails the check itself, with its message). The check itself runs at normal priority."""
    os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), SPARE_NICE)
    import controller.registry.inspect  # noqa: F401

    for name in ("onnx", "onnx.checker"):
        with contextlib.suppress(ImportError):
            __import__(name)


def _main(argv: list[str]) -> int:
    import resource

    if argv[:1] == [SPARE]:
        preload = threading.Thread(target=_preload, name="preload", daemon=True)
        preload.start()
        line = sys.stdin.readline()
        preload.join()
        if not line.strip():
            return 0  # EOF: the controller stopped keeping spares
        argv = json.loads(line)
    limit = int(argv[0])
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))  # before the model is read
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
    status = _main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)  # the answer is out: the interpreter's teardown of numpy and onnx took ~40 ms of each check
