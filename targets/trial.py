"""The backend trial: the reference runtime answers first on representative inputs, then every candidate is loaded,
compared with those answers (never with each other) and, if it agrees, timed turn about with the others."""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocol.compat import zip_strict
from targets import registry, tensorrt
from targets.agreement import disagreement, worst_deviation
from targets.base import Backend, BackendError
from targets.candidates import Candidate, reference
from targets.footprint import Footprint, Meter, import_runtime, pin_allocator, volunteer_for_oom, warm_up
from targets.inputs import Inputs, ProbeInputs, SampleError, find_runnable, fit_samples
from targets.timing import pooled_ms, turn_about_pruned

log = logging.getLogger(__name__)

NOT_TRIED = "not tried"
MIN_RUNS = 3

MAX_RUNS = 60  # per candidate in all: enough for a p50, and a fast model does not spend the whole budget
ROUNDS = 4
MEMORY_TIE = 0.05  # candidates this close to the fastest p50 are ranked by the memory they take


@dataclass
class CandidateResult:
    name: str
    p50_ms: float | None = None
    p95_ms: float | None = None
    load_ms: float | None = None
    runs: int = 0
    agreed: bool = False
    error: str | None = None  # why it was passed over (failed to load, errored, disagreed, out of budget)
    precision: str = "full"
    deviation: float | None = None  # worst error against the reference, in units of the tolerance (<= 1 agrees)
    rss_mb: float | None = None  # resident memory its load and a run added (steady), targets/footprint.py
    peak_mb: float | None = None  # and at its highest while loading and running
    unified_mb: float | None = None  # a Jetson's GPU (nvmap) memory it holds, beside rss_mb (targets/gpu_memory.py)
    arena: dict[str, Any] | None = None  # ONNX Runtime's CPU arena measured on and off (targets/trial_arena.py)


@dataclass
class TrialOutcome:
    """What the trial found: the winner (loaded), how every candidate fared, the reference and the inputs used."""

    backend: Backend | None
    chosen: Candidate | None
    options: dict[str, Any]
    results: list[CandidateResult]
    reference: str
    reference_note: str
    probe: ProbeInputs
    timed: bool = True
    problems: list[str] = field(default_factory=list)


def load(
    candidate: Candidate,
    path: Path,
    model_format: str,
    options: dict[str, Any] | None = None,
    meter: Meter | None = None,
) -> Backend:
    """Load one candidate with its options (plus `options`); BackendError says why it cannot. `meter` starts once
    the runtime is imported, right before the model's own load."""
    announce(candidate.name)
    try:
        backend = registry.create(candidate.backend, {**candidate.options, **(options or {})})
    except (KeyError, ValueError) as exc:
        raise BackendError(f"invalid options for {candidate.backend}: {exc}") from exc
    if meter is not None:
        import_runtime(backend.runtime_module)
        meter.start()
    backend.load(path, model_format)
    return backend


def announce(name: str) -> None:
    """In the isolated trial worker, say which runtime is about to run, so a native crash can be blamed on it; the
    worker is the OOM killer's first choice, so running out of memory ends the trial and not the agent."""
    if getattr(sys, "_edge_trial_worker", False):
        volunteer_for_oom()
        print(f"TRYING {name}", file=sys.stderr, flush=True)


def _measured(result: CandidateResult, footprint: Footprint) -> None:
    result.rss_mb, result.peak_mb, result.unified_mb = footprint.rss_mb, footprint.peak_mb, footprint.unified_mb


def run_trial(
    path: Path,
    model_format: str,
    cands: list[Candidate],
    budget_s: float,
    samples: list[Inputs] | None = None,
    hints: dict[str, list[int]] | None = None,
) -> TrialOutcome:
    """Reference first, then every candidate judged against it; raises BackendError when nothing can load the model."""
    ref_cand, ref, note, failures, ref_load_ms, ref_meter = _load_reference(path, model_format, cands)
    probe, want = _reference_answers(ref, samples, hints)
    # the reference's footprint once loaded and run twice (ONNX Runtime's memory pattern allocates its planned
    # buffers on the second run: ppocr_v4_det 43.9 MiB after one, 67 after the agent's warm-up), as the agent measures
    # its load and warm-up; not after judging the others, whose first use of the judging code no serving model pays
    # for (ddddocr: 30.6 predicted vs 19.9 MiB measured)
    if probe.sets:  # run once already, as the agent's loader warms its winner up (footprint.warm_up)
        warm_up(ref, probe.sets[0], done=1)
    ref_footprint = ref_meter.stop()
    if not probe.sets:
        result = CandidateResult(ref_cand.name, agreed=True)
        _measured(result, ref_footprint)
        return TrialOutcome(ref, ref_cand, {}, [*failures, result], ref_cand.name, note, probe, timed=False)
    results: list[CandidateResult] = list(failures)
    entrants: list[tuple[Candidate, Backend, dict[str, Any], CandidateResult]] = []
    for cand in (c for c in cands if c.name not in {f.name for f in failures}):
        result = CandidateResult(cand.name, precision=cand.precision)
        results.append(result)
        if cand.precision != "full" and probe.source != "samples":
            # synthetic inputs hide reduced precision's errors (seen: bf16 passing on noise, 1442x the tolerance
            # off on a real page); it competes only on the operator's samples
            result.error = f"{NOT_TRIED}: reduced precision competes only on samples given with the model"
            continue
        options = _name_options(cand, ref_cand, ref) | tensorrt.trial_options(cand, path, ref.inputs, probe.sets, hints)
        meter = Meter()
        try:
            started = time.perf_counter()
            backend = ref if cand is ref_cand else load(cand, path, model_format, options, meter)
            result.load_ms = ref_load_ms if cand is ref_cand else round((time.perf_counter() - started) * 1000, 2)
            result.deviation, problem = _judge(backend, probe.sets, want, ref_cand.name)
            if cand is not ref_cand:
                warm_up(backend, probe.sets[0], done=1)
            _measured(result, ref_footprint if cand is ref_cand else meter.stop())
        except (BackendError, SampleError) as exc:
            result.error = str(exc)
            continue
        except Exception as exc:  # a runtime failing in an unexpected way is one more failed candidate
            result.error = f"{type(exc).__name__}: {exc}"[:300]
            continue
        if problem:
            result.error = problem
            if backend is not ref:
                backend.close()
            continue
        result.agreed = True
        entrants.append((cand, backend, options, result))
    pin_allocator()  # serving thresholds for the timing, also where a candidate failed inside its measured load
    _time_turn_about(entrants, probe.sets[0], budget_s)
    best = _fastest_then_smallest(entrants)
    for cand, backend, _, _ in entrants:
        if cand is not best[0]:
            backend.close()
    return TrialOutcome(best[1], best[0], best[2], results, ref_cand.name, note, probe)


def _fastest_then_smallest(
    entrants: list[tuple[Candidate, Backend, dict[str, Any], CandidateResult]],
) -> tuple[Candidate, Backend, dict[str, Any], CandidateResult]:
    """The fastest; among those within MEMORY_TIE of it, the one whose load added the least memory (measured: a
    64 MiB MatMul took 68 MiB on ONNX Runtime, 175 MiB on OpenVINO, at 18.9 vs 18.4 ms)."""
    p50 = {id(e): e[3].p50_ms if e[3].p50_ms is not None else float("inf") for e in entrants}
    fastest = min(p50.values())
    near = [e for e in entrants if p50[id(e)] <= fastest * (1 + MEMORY_TIE)]
    return min(near, key=lambda e: (e[3].rss_mb if e[3].rss_mb is not None else float("inf"), p50[id(e)]))


def _reference_answers(
    ref: Backend, samples: list[Inputs] | None, hints: dict[str, list[int]] | None
) -> tuple[ProbeInputs, list[dict[str, Any]]]:
    if samples:
        sets = fit_samples(ref.inputs, samples)
        try:
            return ProbeInputs(sets, "samples"), [ref.infer(x) for x in sets]
        except BackendError as exc:
            raise BackendError(f"the model's own runtime ({ref.label}) fails on the given samples: {exc}") from exc
    probe, outputs = find_runnable(ref.inputs, ref.infer, hints)
    return probe, ([outputs] if outputs is not None else [])


def _judge(backend: Backend, sets: list[Inputs], want: list[dict[str, Any]], ref_name: str) -> tuple[float, str | None]:
    worst = 0.0
    for inputs, expected in zip_strict(sets, want):
        got = backend.infer(inputs)
        problem = disagreement(got, expected, f"the reference ({ref_name})")
        if problem:
            return worst_deviation(got, expected), problem
        worst = max(worst, worst_deviation(got, expected))
    return round(worst, 4), None


def _name_options(cand: Candidate, ref_cand: Candidate, ref: Backend) -> dict[str, Any]:
    """OpenVINO may rename tensors: give it the reference's names by position."""
    if cand is ref_cand or cand.backend != "openvino":
        return {}
    return {"input_names": [s.name for s in ref.inputs], "output_names": [s.name for s in ref.outputs]}


def _time_turn_about(
    entrants: list[tuple[Candidate, Backend, dict[str, Any], CandidateResult]], inputs: Inputs, budget_s: float
) -> None:
    """p50/p95 of each agreeing candidate from blocks taken in turn (targets.timing); one clearly beaten after a round
    sits out the rest (its p50 and runs from the rounds it ran)."""
    runners = [lambda b=backend: b.infer(inputs) for _, backend, _, _ in entrants]
    block_s = max(budget_s, 0.05) / (ROUNDS * max(len(entrants), 1))
    per_block = MAX_RUNS // ROUNDS
    measured = turn_about_pruned(runners, rounds=ROUNDS, block_s=block_s, min_runs=MIN_RUNS, max_runs=per_block)
    for (_, _, _, result), rounds in zip_strict(entrants, measured):
        result.runs = sum(len(r) for r in rounds)
        result.p50_ms = round(pooled_ms(rounds, 50), 4)
        result.p95_ms = round(pooled_ms(rounds, 95), 4)


def _load_reference(
    path: Path, model_format: str, cands: list[Candidate]
) -> tuple[Candidate, Backend, str, list[CandidateResult], float, Meter]:
    """The format's own runtime at full precision; where it cannot load the model, the next full-precision candidate
    that can (noted in the status), and how long it took to load (it is loaded once: its trial reuses it).
    BackendError with the own runtime's reason when none can."""
    own, note = reference(model_format, cands)
    if own is None:
        raise BackendError(note)
    failures: list[CandidateResult] = []
    for cand in [own] + [c for c in cands if c is not own and c.precision == "full"]:
        meter = Meter()  # stopped once the reference has run on the inputs, like every other candidate
        try:
            started = time.perf_counter()
            backend = load(cand, path, model_format, meter=meter)
        except BackendError as exc:
            failures.append(CandidateResult(cand.name, error=str(exc), precision=cand.precision))
            continue
        load_ms = round((time.perf_counter() - started) * 1000, 2)
        if failures:
            note = f"{own.name} cannot load the model, so {cand.name} is the reference: {failures[0].error}"
        return cand, backend, note, failures, load_ms, meter
    others = f" (nor could {', '.join(f.name for f in failures[1:])})" if len(failures) > 1 else ""
    raise BackendError(f"{failures[0].error}{others}")
