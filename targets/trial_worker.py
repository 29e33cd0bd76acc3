"""The backend trial in a short-lived worker process: runtimes that do not win never enter the agent's memory, and a
runtime that dies natively (SIGSEGV in a driver or a mismatched wheel) fails its candidate, not the agent."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from targets import trial_arena, trial_spare
from targets.base import BackendError
from targets.candidates import Candidate
from targets.inputs import Inputs, ProbeInputs, pack_samples, unpack_samples
from targets.trial import CandidateResult, TrialOutcome, load, run_trial

log = logging.getLogger(__name__)

WORKER_TIMEOUT_S = 600.0
MAX_CRASHES = 3
# The trial yields the CPU to the models serving now: on a loaded 2-core box a trial at full priority tripled the
# clients' p99 during an update. Its candidates all run at this priority, so they are still compared alike.
TRIAL_NICE = 10
REFUSED = "REFUSED "  # the worker's stderr line carrying the trial's verdict when no backend can run the model


def run_isolated(
    path: Path,
    model_format: str,
    hardware: dict[str, Any],
    cands: list[Candidate],
    budget_s: float,
    samples: list[Inputs] | None,
    hints: dict[str, list[int]] | None,
    admit: Callable[[CandidateResult], None] | None = None,
    arena_from_mb: float = 0.0,
) -> TrialOutcome:
    """run_trial in a child process; a candidate whose runtime crashes the child is left out with the signal named,
    and the trial runs again without it. The winner is then loaded here, with the options the trial found, once
    `admit` (if given) has heard its trial result and not refused it."""
    crashed: list[CandidateResult] = []
    remaining = list(cands)
    for _ in range(MAX_CRASHES + 1):
        with tempfile.TemporaryDirectory(prefix="edge-trial-") as tmp:
            request = Path(tmp) / "request.json"  # the model's path absolute: the worker runs in another directory
            request.write_text(json.dumps({
                "path": str(path.absolute()), "format": model_format, "budget_s": budget_s, "hints": hints,
                "candidates": [asdict(c) for c in remaining],
                "samples": str(Path(tmp) / "samples.npz") if samples else None,
            }))  # fmt: skip
            if samples:
                (Path(tmp) / "samples.npz").write_bytes(pack_samples(samples))
            proc = trial_spare.run(request, WORKER_TIMEOUT_S)  # a spare worker with the runtimes imported, if any
            if proc.returncode == 0 or (Path(tmp) / "outcome.json").exists():  # a crash after the answer is harmless
                return _outcome(Path(tmp), remaining, path, model_format, crashed, admit, budget_s, arena_from_mb)

            refused = [ln[len(REFUSED) :] for ln in proc.stderr.splitlines() if ln.startswith(REFUSED)]
            if refused:  # the trial's own one-line verdict: nothing can run the model
                raise BackendError(refused[-1])
            culprit, why = _blame(proc, remaining)
            if culprit is None:
                raise BackendError(f"the backend trial failed: {why}")
            log.error("backend trial: %s %s; trying again without it", culprit.name, why)
            crashed.append(CandidateResult(culprit.name, error=why, precision=culprit.precision))
            remaining = [c for c in remaining if c is not culprit]
            if not remaining or _is_reference(culprit, model_format):
                raise BackendError(f"{culprit.name} {why} (the model's own runtime: nothing can be checked)")
    raise BackendError("the backend trial crashed too often: " + "; ".join(f"{r.name} {r.error}" for r in crashed))


def check_isolated(
    cand: Candidate,
    path: Path,
    model_format: str,
    options: dict[str, Any] | None,
    samples: list[Inputs] | None,
    hints: dict[str, list[int]] | None,
) -> None:
    """Load `cand` (a backend the operator pinned: no trial) with `options` and run it once in a worker process
    first, so a runtime that dies natively on this model fails the version instead of the agent; BackendError."""
    with tempfile.TemporaryDirectory(prefix="edge-check-") as tmp:
        request = Path(tmp) / "request.json"
        request.write_text(json.dumps({
            "check": True, "path": str(path.absolute()), "format": model_format, "hints": hints,
            "candidates": [asdict(cand)], "options": options or {},
            "samples": str(Path(tmp) / "samples.npz") if samples else None,
        }))  # fmt: skip
        if samples:
            (Path(tmp) / "samples.npz").write_bytes(pack_samples(samples))
        proc = trial_spare.run(request, WORKER_TIMEOUT_S)
    if proc.returncode == 0:
        return
    refused = [ln[len(REFUSED) :] for ln in proc.stderr.splitlines() if ln.startswith(REFUSED)]
    if refused:
        raise BackendError(refused[-1])
    _, why = _blame(proc, [cand])
    raise BackendError(f"the isolated load check {why}" if proc.returncode < 0 else f"the load check failed: {why}")


def _check(request: dict[str, Any]) -> None:
    """The worker's side of check_isolated: load and run once (a native crash ends this process, not the agent)."""
    from targets.inputs import find_runnable, fit_samples

    cand = Candidate(**request["candidates"][0])
    backend = load(cand, Path(request["path"]), request["format"], request["options"])
    samples = unpack_samples(Path(request["samples"])) if request.get("samples") else None
    if samples:
        for inputs in fit_samples(backend.inputs, samples)[:1]:
            backend.infer(inputs)
    else:
        find_runnable(backend.inputs, backend.infer, request["hints"])


def _is_reference(cand: Candidate, model_format: str) -> bool:
    from targets.candidates import REFERENCE

    return REFERENCE.get(model_format) == cand.name


def _blame(proc: subprocess.CompletedProcess[str], cands: list[Candidate]) -> tuple[Candidate | None, str]:
    """The candidate the worker was running when it died, and how it died."""
    code = proc.returncode
    if code > 0:  # an error the worker reported (its last line), not a crash
        tail = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("TRYING ")]
        return None, (tail[-1] if tail else f"exited with status {code}")[:300]
    trying = [ln.split(" ", 1)[1] for ln in proc.stderr.splitlines() if ln.startswith("TRYING ")]
    culprit = next((c for c in cands if trying and c.name == trying[-1]), None)
    return culprit, f"crashed the trial process with {_signal_name(-code)}"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _outcome(
    tmp: Path,
    cands: list[Candidate],
    path: Path,
    model_format: str,
    crashed: list[CandidateResult],
    admit: Callable[[CandidateResult], None] | None = None,
    budget_s: float = 0.0,
    arena_from_mb: float = 0.0,
) -> TrialOutcome:
    answer = json.loads((tmp / "outcome.json").read_text())
    results = crashed + [CandidateResult(**r) for r in answer["results"]]
    sets = unpack_samples(tmp / "inputs.npz") if (tmp / "inputs.npz").exists() else []
    p = answer["probe"]
    probe = ProbeInputs(sets, p["source"], p["note"], p["tried"])
    chosen = next((c for c in cands if c.name == answer.get("chosen")), None)
    if answer.get("error") or chosen is None:
        return TrialOutcome(None, None, {}, results, answer["reference"], answer["note"], probe, timed=False)
    result, options = next(r for r in results if r.name == chosen.name), answer["options"]
    # ONNX Runtime's CPU arena on or off, measured in a fresh worker where the memory budget makes it matter
    if sets and trial_arena.applies(chosen, options, result.rss_mb, arena_from_mb):
        result.arena = trial_arena.measure_isolated(chosen, path, model_format, options, sets, asdict(result), budget_s)
        if result.arena["chosen"] == "off":
            options = options | {trial_arena.OPTION: False}
            # steady: off's (what an agent-like process keeps: bench/footprint.py); peak: the larger of the two, so
            # the admission keeps room for a heap that holds on to what off frees (a long test process grew 73.7 MiB
            # where off predicted 4.5 and on 73.4)
            off, on = result.arena["off"], result.arena["on"]
            result.rss_mb = off["rss_mb"]
            result.peak_mb = max(v for v in (off.get("peak_mb"), on.get("peak_mb"), on.get("rss_mb")) if v is not None)
    if admit is not None:
        admit(result)
    backend = load(chosen, path, model_format, options)
    return TrialOutcome(backend, chosen, options, results, answer["reference"], answer["note"], probe, answer["timed"])


def _work(request_path: Path) -> int:
    request = json.loads(request_path.read_text())
    if request.get("arena"):
        trial_arena.work(request, request_path.parent / "arena.json")
        return 0
    if request.get("check"):
        _check(request)
        return 0
    cands = [Candidate(**c) for c in request["candidates"]]
    samples = unpack_samples(Path(request["samples"])) if request.get("samples") else None
    tmp = request_path.parent
    outcome = run_trial(Path(request["path"]), request["format"], cands, request["budget_s"], samples, request["hints"])
    if outcome.probe.sets:
        (tmp / "inputs.npz").write_bytes(pack_samples(outcome.probe.sets))
    (tmp / "outcome.tmp").write_text(json.dumps({
        "chosen": outcome.chosen.name if outcome.chosen else None, "options": outcome.options,
        "results": [asdict(r) for r in outcome.results], "reference": outcome.reference, "note": outcome.reference_note,
        "probe": {"source": outcome.probe.source, "note": outcome.probe.note, "tried": outcome.probe.tried},
        "timed": outcome.timed, "error": outcome.backend is None,
    }))  # fmt: skip
    os.replace(tmp / "outcome.tmp", tmp / "outcome.json")  # whole or absent, whatever happens next

    return 0


def main(argv: list[str]) -> int:
    sys._edge_trial_worker = True  # type: ignore[attr-defined]
    os.nice(TRIAL_NICE)
    logging.basicConfig(level=logging.WARNING)
    if argv[:1] == [trial_spare.SPARE]:  # started ahead: import the runtimes, then wait for the job
        request = trial_spare.wait_for_request()
        if request is None:
            return 0
        argv = [request]
    try:
        return _work(Path(argv[0]))
    except BackendError as exc:
        print(f"{REFUSED}{exc}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip the interpreter's teardown: runtimes' worker threads destroyed at exit can abort the process
    # ("terminate called without an active exception", seen with OpenVINO) after the outcome is written.
    os._exit(code)
