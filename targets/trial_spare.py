"""A spare trial worker, started ahead of need with the runtimes already imported: a deployment's isolated trial (or
load check) no longer waits ~2 s for a fresh Python to import ONNX Runtime, OpenVINO and LiteRT.

Each worker still runs one job and exits (a runtime that crashes natively takes only that worker down, with the same
blame as before); the next spare is started as soon as one is handed a job, at the trial's low priority. Its memory
is measured when it is handed a job: over `max_mb` (all runtimes imported is ~90 MiB here) spares stop and the trial
falls back to a fresh worker each time. A spare that died while waiting is replaced. Off until `enable()`.

A spare's output goes to files, not pipes, and it reads its job from the raw stdin descriptor with Python's
`sys.stdin` on /dev/null: libraries fork helpers from their own threads (OpenVINO's telemetry uses multiprocessing),
and a forked child that closes a `sys.stdin` whose lock the waiting thread held, or keeps an output pipe open, would
hang the agent's wait for the trial."""

from __future__ import annotations

import importlib
import logging
import os
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from targets.footprint import MIB, PRELOAD_EXTRA, import_runtime, rss_bytes

log = logging.getLogger(__name__)

SPARE = "--spare"  # trial_worker's argument: import the runtimes, then wait for a request path on stdin
ROOT = str(Path(__file__).resolve().parents[1])


@dataclass
class _State:
    max_mb: float = 0.0  # 0: no spares
    proc: subprocess.Popen[bytes] | None = None
    output: tuple[IO[bytes], IO[bytes]] | None = None  # the spare's stdout and stderr files
    last_mib: float | None = None  # the last spare's resident memory when it was handed a job


_state = _State()
_lock = threading.Lock()


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "targets.trial_worker", *args]


def enable(max_mb: float) -> None:
    """Keep a spare worker from now on (0 turns spares off); the first one starts at once."""
    with _lock:
        _state.max_mb = max_mb
    if max_mb > 0:
        _prestart()
    else:
        disable()


def disable() -> None:
    """No more spares; the waiting one ends (its stdin closes)."""
    with _lock:
        _state.max_mb = 0.0
        proc, _state.proc = _state.proc, None
        output, _state.output = _state.output, None
    _end(proc, output)


def status() -> dict[str, float | bool | None]:
    """Whether spares are kept, and the last one's resident memory (MiB) when it took a job."""
    return {"enabled": _state.max_mb > 0, "max_mb": _state.max_mb, "last_mib": _state.last_mib}


def run(request: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    """A worker's run of `request` (the trial's or the load check's request file): on the spare when one is waiting,
    else in a fresh process; subprocess.TimeoutExpired as subprocess.run raises it."""
    with _lock:
        proc, _state.proc = _state.proc, None
        output, _state.output = _state.output, None
    if proc is not None and not _fit(proc, output):
        proc = None
        for f in output or ():
            f.close()
    if proc is None or output is None:
        result = subprocess.run(
            command(str(request)), capture_output=True, text=True, timeout=timeout, cwd=ROOT
        )  # fmt: skip
        _prestart()
        return result
    try:
        _send(proc, f"{request}\n".encode())
        proc.wait(timeout)  # the worker's exit, not its pipes' EOF: a helper it forked may outlive it
        out, err = (_read(f) for f in output)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    finally:
        for f in output:
            f.close()
        _prestart()  # after the job, not beside it: its imports would take the CPU the trial is timed on
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _send(proc: subprocess.Popen[bytes], data: bytes) -> None:
    assert proc.stdin is not None
    try:
        proc.stdin.write(data)
        proc.stdin.close()
    except (BrokenPipeError, OSError):  # it died just now: its exit status says how
        pass


def _read(f: IO[bytes]) -> str:
    f.seek(0)
    return f.read().decode(errors="replace")


def _fit(proc: subprocess.Popen[bytes], output: Any) -> bool:
    """Whether the spare can take a job: alive, and within the memory cap (else spares stop, with a warning)."""
    if proc.poll() is not None:
        log.warning(
            "the spare trial worker ended while waiting (status %s); a fresh one runs this trial", proc.returncode
        )
        return False
    mib = rss_mib(proc.pid)
    _state.last_mib = mib
    if mib is not None and mib > _state.max_mb > 0:
        log.warning(
            "the spare trial worker holds %.0f MiB, over trial_spare_max_mb = %g: no more spares (each trial starts "
            "a fresh worker); raise trial_spare_max_mb to keep them", mib, _state.max_mb,
        )  # fmt: skip
        disable()
        _end(proc, output)
        return False
    return True


def _prestart() -> None:
    with _lock:
        if _state.max_mb <= 0 or (_state.proc is not None and _state.proc.poll() is None):
            return
        output = (tempfile.TemporaryFile(), tempfile.TemporaryFile())  # noqa: SIM115 - closed after its job
        try:
            _state.proc = subprocess.Popen(
                command(SPARE), stdin=subprocess.PIPE, stdout=output[0], stderr=output[1], cwd=ROOT
            )  # fmt: skip
            _state.output = output
        except OSError as exc:
            log.warning("cannot start a spare trial worker: %s", exc)
            _state.proc = None
            for f in output:
                f.close()


def _end(proc: subprocess.Popen[bytes] | None, output: Any) -> None:
    try:
        if proc is None or proc.poll() is not None:
            return
        _send(proc, b"")  # EOF: the spare exits without running anything
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    finally:
        for f in output or ():
            f.close()


def rss_mib(pid: int) -> float | None:
    """A process' resident memory in MiB (None where /proc cannot tell)."""
    return rss_bytes(pid) / MIB or None


def preload() -> None:
    """The worker's side: import every installed runtime (and numpy) the way their backends' load() will, then each
    runtime's one-time setup that the trial takes before measuring a candidate (targets.footprint.import_runtime:
    ~0.27 s for ONNX Runtime and OpenVINO here, paid inside every deployment's trial until it moved here)."""
    from targets.registry import backend_types

    modules, runtimes = ["numpy"], []
    for backend in backend_types().values():
        if backend.installed():
            modules += [backend.runtime_module, *PRELOAD_EXTRA.get(backend.runtime_module, ())]
            runtimes.append(backend.runtime_module)
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # a broken runtime fails its candidate in the trial, with its own message
            log.debug("spare trial worker: importing %s failed: %s", name, exc)
    for runtime in runtimes:
        import_runtime(runtime)  # what fails here fails again, with its message, when the trial loads a candidate


def wait_for_request() -> str | None:
    """The worker's side: preload, then the request path the agent sends (None at EOF: no job, exit), read from the
    raw descriptor: sys.stdin is /dev/null from here on (see the module's docstring)."""
    sys.stdin = open(os.devnull)  # noqa: SIM115 - the process's stdin for the rest of its life
    preload()
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(0, 4096)
        if not chunk:
            break
        data += chunk
    return data.decode().strip() or None
