"""Measured backend selection: the trial (targets/trial.py) judges every candidate against the format's own runtime
on representative inputs and the fastest that agrees wins. Results, with the inputs that ran, are cached per (model
sha256, hardware fingerprint) so a restart does not repeat the trial.

Entry point: `select_backend(path, model_format, hardware, ...) -> Selection`; `Selection.backend` is loaded."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from protocol.files import sha256_file
from targets.base import Backend, BackendError
from targets.candidates import Candidate, candidates
from targets.inputs import Inputs, ProbeInputs, find_runnable, pack_samples, unpack_samples
from targets.trial import NOT_TRIED, CandidateResult, TrialOutcome, load, run_trial

log = logging.getLogger(__name__)

# Called with the chosen candidate's trial result (its measured memory) right before it is loaded in the caller's
# process; raises (BackendError) to keep it out. agent/serving/memory.py admits a version this way.
Admit = Callable[[CandidateResult], None]

CACHE_FILE = "backend-selection.json"
CACHE_VERSION = 2  # entries of an older trial (judged without a trusted reference) are tried again
_cache_lock = threading.Lock()

__all__ = ["Candidate", "CandidateResult", "Selection", "candidates", "load_candidate", "select_backend"]


@dataclass
class Selection:
    backend: Backend  # loaded and run at least once (unless trial=False)
    label: str
    candidates: list[CandidateResult]
    reason: str
    cached: bool = False
    precision: str = "full"
    reference: str = ""
    probe: ProbeInputs = field(default_factory=lambda: ProbeInputs([], "none"))
    timed: bool = True
    options: dict[str, Any] = field(default_factory=dict)
    choice: str = ""  # the candidate's name, e.g. "openvino:cpu:bf16" (the label does not name the precision)
    stale: bool = False  # a choice made on other hardware or runtimes, serving until a trial here replaces it

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe summary for the device status."""
        return {
            "backend": self.label,
            "reason": self.reason,
            "cached": self.cached,
            "precision": self.precision,
            "reference": self.reference,
            "inputs": self.probe.describe(),
            "timed": self.timed,
            "candidates": [asdict(c) for c in self.candidates],
        }


def load_candidate(
    candidate: Candidate, path: Path, model_format: str, options: dict[str, Any] | None = None
) -> Backend:
    """Load one candidate (e.g. a failover fallback); BackendError says why it cannot."""
    return load(candidate, path, model_format, options)


# -- cache -------------------------------------------------------------------------------------------------------


def hardware_fingerprint(hardware: dict[str, Any]) -> str:
    """What a timing depends on: the CPU, accelerators and runtime versions, not memory use or the OS patch level."""
    keys = ("arch", "cpu_model", "cpu_flags", "cores", "jetson", "ort_providers", "openvino_devices", "runtimes")
    blob = json.dumps({k: hardware.get(k) for k in keys}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _cache_read(cache_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((cache_dir / CACHE_FILE).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _cache_update(cache_dir: Path, key: str, entry: dict[str, Any] | None) -> None:
    with _cache_lock:
        data = _cache_read(cache_dir)
        if entry is None:
            data.pop(key, None)
        else:
            data[key] = entry
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cache_dir / f".{CACHE_FILE}.{os.getpid()}.{threading.get_ident()}.tmp"
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, cache_dir / CACHE_FILE)


def _inputs_file(cache_dir: Path, key: str) -> Path:
    return cache_dir / "inputs" / (hashlib.sha256(key.encode()).hexdigest()[:32] + ".npz")


def cache_key(path: Path, model_format: str, hardware: dict[str, Any], sha256: str | None, extra: str = "") -> str:
    return f"v{CACHE_VERSION}/{sha256 or sha256_file(path)}/{model_format}/{hardware_fingerprint(hardware)}{extra}"


# -- entry point -----------------------------------------------------------------------------------------------------


def select_backend(
    path: Path,
    model_format: str,
    hardware: dict[str, Any],
    *,
    override: str | None = None,
    options: dict[str, Any] | None = None,
    trial: bool = True,
    budget_s: float = 3.0,
    cache_dir: Path | None = None,
    sha256: str | None = None,
    samples: list[Inputs] | None = None,
    hints: dict[str, list[int]] | None = None,
    isolated: bool = False,
    defer_trial: bool = False,
    admit: Admit | None = None,
    arena_from_mb: float = 0.0,
) -> Selection:
    """Choose and load the backend for one model; raise BackendError (the cause, in one line) if none can run it.

    `override`: a backend name ("openvino") or candidate name ("onnxruntime:cuda") chosen by the operator; it is
    loaded with `options` and no trial (with `isolated`, after a load check in a worker process). `trial=False`
    takes the first candidate in rule order that loads. `samples`
    (input sets keyed by input name) or `hints` (input name -> shape) make the inputs every check runs on.
    `isolated` runs the trial in a short-lived worker process: runtimes that do not win never enter this process,
    and a runtime that crashes natively fails its candidate instead of the caller. `defer_trial` (a restart) takes a
    choice cached for this model on other hardware or runtimes when there is one (`stale`: the caller re-tries in
    the background) rather than holding the model back for a trial. `admit` hears the chosen candidate's trial
    result before it is loaded here (a cached choice's too), and may refuse it. `arena_from_mb`: ONNX Runtime's arena
    is measured on and off only for a winner whose footprint reaches it (targets/trial_arena.py; 0: always)."""
    path = Path(path)
    cands = candidates(model_format, hardware, cache_dir)
    if override:  # no trial, but a new version's load is still checked in a worker first (a restart's is not)
        return _overridden(path, model_format, cands, override, options, samples, hints, isolated and not defer_trial)
    if not cands:
        raise BackendError(f"no installed backend reads {model_format!r} models; install the matching extra")
    if not trial:
        return _first_that_loads(path, model_format, cands, samples, hints)
    extra = (
        "/" + hashlib.sha256(pack_samples(samples) if samples else json.dumps(hints or {}).encode()).hexdigest()[:12]
    )
    key = cache_key(path, model_format, hardware, sha256, extra) if cache_dir is not None else None
    if key is not None and cache_dir is not None:
        cached = _from_cache(Path(cache_dir), key, cands, path, model_format, admit)
        if cached is None and defer_trial:
            cached = _from_stale(Path(cache_dir), key, cands, path, model_format, admit)
        if cached is not None:
            return cached
    if isolated:
        from targets.trial_worker import run_isolated

        outcome = run_isolated(path, model_format, hardware, cands, budget_s, samples, hints, admit, arena_from_mb)
    else:
        outcome = run_trial(path, model_format, cands, budget_s, samples, hints)
        chosen = next((r for r in outcome.results if outcome.chosen and r.name == outcome.chosen.name), None)
        if admit is not None and chosen is not None:
            try:
                admit(chosen)  # loaded here already: refused, it is closed again
            except BackendError:
                if outcome.backend is not None:
                    outcome.backend.close()
                raise
    selection = _selection(outcome)
    if key is not None and cache_dir is not None and selection.timed:
        _remember(Path(cache_dir), key, selection)
    return selection


def _selection(outcome: TrialOutcome) -> Selection:
    if outcome.backend is None or outcome.chosen is None:
        raise BackendError(_none_worked(outcome))
    chosen, results = outcome.chosen, outcome.results
    if not outcome.timed:
        why = outcome.probe.note or "no size tried ran"
        reason = (
            f"{chosen.name} (the reference), untimed: no synthetic input ran on the model ({why}); "
            "give representative inputs with `edgectl push --sample FILE` or `--input-shape NAME=1x512`"
        )
    else:
        working = [r for r in results if r.agreed]
        p50 = next((r.p50_ms for r in results if r.name == chosen.name), None)
        if len(working) == 1:
            reason = f"{chosen.name}: the only candidate that agrees with the reference"
        else:
            runner_up = min((r for r in working if r.name != chosen.name), key=lambda r: r.p50_ms or 0.0)
            reason = f"{chosen.name}: fastest that agrees with the reference ({outcome.reference}), p50 {p50} ms vs "
            reason += f"{runner_up.name} {runner_up.p50_ms} ms"
        failed = [r.name for r in results if r.error and not r.error.startswith(NOT_TRIED)]
        if failed:
            reason += f"; passed over: {', '.join(failed)}"
    return Selection(
        outcome.backend, outcome.backend.label, results, reason, precision=chosen.precision,
        reference=outcome.reference, probe=outcome.probe, timed=outcome.timed, options=outcome.options,
        choice=chosen.name,
    )  # fmt: skip


def _remember(cache_dir: Path, key: str, selection: Selection) -> None:
    entry = {
        "choice": selection.choice or selection.label,
        "options": selection.options,
        "reason": selection.reason,
        "precision": selection.precision,
        "reference": selection.reference,
        "inputs": {"source": selection.probe.source, "note": selection.probe.note},
        "candidates": [asdict(r) for r in selection.candidates],
        "at": time.time(),
    }
    if selection.probe.sets:
        target = _inputs_file(cache_dir, key)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(pack_samples(selection.probe.sets))
    _cache_update(cache_dir, key, entry)


def _from_cache(
    cache_dir: Path, key: str, cands: list[Candidate], path: Path, fmt: str, admit: Admit | None = None
) -> Selection | None:
    entry = _cache_read(cache_dir).get(key)
    if not entry:
        return None
    cand = next((c for c in cands if c.name == entry.get("choice")), None)
    if cand is None:
        return None
    try:
        results = [CandidateResult(**r) for r in entry.get("candidates", [])]
        chosen = next((r for r in results if r.name == cand.name), None)
        if admit is not None and chosen is not None:
            try:
                admit(chosen)
            except BackendError as exc:
                raise _Refused(exc) from exc
        backend = load(cand, path, fmt, entry.get("options") or {})
        sets = unpack_samples(_inputs_file(cache_dir, key)) if _inputs_file(cache_dir, key).exists() else []
    except _Refused as refused:
        raise refused.exc from None  # the choice stands: the version does not fit now
    except (BackendError, TypeError, ValueError) as exc:
        log.warning("cached backend choice %s no longer loads (%s): trying again", entry.get("choice"), exc)
        _cache_update(cache_dir, key, None)
        return None
    inputs = entry.get("inputs") or {}
    probe = ProbeInputs(sets, inputs.get("source", "none") if sets else "none", inputs.get("note", ""))
    return Selection(
        backend, backend.label, results, entry.get("reason", ""), cached=True, precision=entry.get("precision", "full"),
        reference=entry.get("reference", ""), probe=probe, options=entry.get("options") or {}, choice=cand.name,
    )  # fmt: skip


class _Refused(Exception):
    def __init__(self, exc: BackendError) -> None:
        self.exc = exc


def _from_stale(
    cache_dir: Path, key: str, cands: list[Candidate], path: Path, fmt: str, admit: Admit | None = None
) -> Selection | None:
    """The newest cached choice for the same model and inputs on other hardware or runtimes (fingerprint aside)."""
    version, sha256, model_format, rest = key.split("/", 3)
    extra = rest[rest.index("/") :] if "/" in rest else ""
    prefix = f"{version}/{sha256}/{model_format}/"
    stale = [k for k in _cache_read(cache_dir) if k.startswith(prefix) and k.endswith(extra) and k != key]
    for other in reversed(stale):
        found = _from_cache(cache_dir, other, cands, path, fmt, admit)
        if found is not None:
            found.stale = True
            found.reason = f"{found.reason} (chosen before the hardware or runtimes changed; a new trial runs)"
            return found
    return None


def _probe(backend: Backend, samples: list[Inputs] | None, hints: dict[str, list[int]] | None) -> ProbeInputs:
    """Inputs for a backend chosen without a trial: the samples, or synthetic inputs it runs."""
    from targets.inputs import fit_samples

    if samples:
        return ProbeInputs(fit_samples(backend.inputs, samples), "samples")
    probe, _ = find_runnable(backend.inputs, backend.infer, hints)
    return probe


def _overridden(
    path: Path,
    model_format: str,
    cands: list[Candidate],
    override: str,
    options: dict[str, Any] | None,
    samples: list[Inputs] | None,
    hints: dict[str, list[int]] | None,
    isolated: bool = False,
) -> Selection:
    match = next((c for c in cands if override in (c.name, c.backend)), None) or Candidate(override, override)
    try:
        if isolated:
            from targets.trial_worker import check_isolated

            check_isolated(match, path, model_format, options, samples, hints)
        backend = load(match, path, model_format, options)
    except BackendError as exc:
        raise BackendError(f"backend {override!r} (set by the operator) failed: {exc}") from exc
    result = CandidateResult(backend.label, agreed=True, precision=backend.precision)
    probe = _probe(backend, samples, hints)
    return Selection(
        backend, backend.label, [result], f"{override} set by the operator", precision=backend.precision, probe=probe,
        timed=False, options=dict(options or {}),
    )  # fmt: skip


def _first_that_loads(
    path: Path,
    model_format: str,
    cands: list[Candidate],
    samples: list[Inputs] | None,
    hints: dict[str, list[int]] | None,
) -> Selection:
    failures: list[CandidateResult] = []
    for cand in (c for c in cands if c.precision == "full"):
        try:
            backend = load(cand, path, model_format)
        except BackendError as exc:
            failures.append(CandidateResult(cand.name, error=str(exc)))
            continue
        reason = "first candidate in rule order that loads (trial disabled)"
        results = [*failures, CandidateResult(cand.name, agreed=True)]
        probe = _probe(backend, samples, hints)
        return Selection(backend, backend.label, results, reason, probe=probe, timed=False, choice=cand.name)
    raise BackendError(_summary(failures))


def _none_worked(outcome: TrialOutcome) -> str:
    return _summary(outcome.results, outcome.reference)


def _summary(results: list[CandidateResult], reference: str = "") -> str:
    """One line naming the cause: the reference runtime's reason first (it is the one that decides)."""
    first = next((r for r in results if r.name == reference and r.error), None) or next(
        (r for r in results if r.error), None
    )
    if first is None:
        return "no backend could run the model"
    others = [r.name for r in results if r.error and r is not first]
    tail = f" (nor could {', '.join(others)})" if others else ""
    return f"{first.error}{tail}"
