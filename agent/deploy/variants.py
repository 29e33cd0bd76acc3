"""Chooses on the device between a model and its optimized variants: agreement, head-to-head, run-off.

Each variant is loaded on the backend its own trial picked, checked against the original on the same inputs and
timed turn about against it; the original and the variants closest to the best then meet in a round-robin run-off,
and the fastest there serves. The original is always in the run-off, so a variant slower than it on this device
never serves."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from agent.deploy.downloads import Artifact
from agent.deploy.timing import best_ms, p50_ms, runner
from protocol import Selection, VariantTrial
from protocol.compat import zip_strict
from targets.base import BackendError
from targets.inputs import SampleError

if TYPE_CHECKING:
    from agent.deploy.loader import Loaded
    from agent.serving.table import LoadedModel
    from protocol import DesiredModel

log = logging.getLogger(__name__)

MIN_COSINE = 0.99
TIMED_RUNS = 20
SETTLE_S = 0.005  # pause before each timed block (see targets.timing.turn_about)
RUNOFF_MARGIN = 0.25  # variants whose head-to-head time is at most this much above the original's go to the run-off
MAX_FINALISTS = 5  # the original and the four best variants at most: finalists stay loaded until the end
RUNOFF_BLOCK_S, RUNOFF_BUDGET_S = 0.05, 2.0  # a timed block per finalist per round; the run-off's time in all
H2H_BLOCK_S = 0.025  # a timed block in a variant's head-to-head with the original
MAX_BLOCK_RUNS = 500  # runs in one timed block, at most (sub-millisecond models)
MIN_LIVE = 16  # live inputs this device's reservoir must hold before agreement is judged on them over given samples


def head_to_head(a: LoadedModel, b: LoadedModel) -> tuple[float, float]:
    """p50 of two loaded models, timed as in the run-off on a shorter budget (H2H_BLOCK_S blocks, 7 rounds)."""
    a_p50, b_p50 = timed_rounds([a, b], block_s=H2H_BLOCK_S, budget_s=7 * 2 * H2H_BLOCK_S)
    return a_p50, b_p50


def runoff(models: list[LoadedModel]) -> list[float]:
    """p50 of each finalist over RUNOFF_BLOCK_S blocks within RUNOFF_BUDGET_S: longer than a head-to-head, to tell
    apart models within a few percent."""
    return timed_rounds(models, block_s=RUNOFF_BLOCK_S, budget_s=RUNOFF_BUDGET_S)


def timed_rounds(models: list[LoadedModel], *, block_s: float, budget_s: float) -> list[float]:
    """p50 of each model after a warm-up, turn about over 3 to 10 rounds (as many as budget_s allows) of one block of
    about block_s each, best round kept: the models see the same load on the box, and a lazy first-run cost (ONNX
    Runtime's int8 kernels, OpenVINO's first infer) is not counted. A block lasts block_s, not a few runs: right after
    the other model ran the caches hold its weights, and short blocks favour small weights over speed once warm."""
    per_run = [_warm_up(model) for model in models]
    round_s = sum(max(3, min(MAX_BLOCK_RUNS, int(block_s / max(t, 1e-6)))) * t for t in per_run) or 1e-6
    rounds = max(3, min(10, int(budget_s / round_s)))
    return best_ms(models, q=50, rounds=rounds, block_s=block_s, max_runs=MAX_BLOCK_RUNS, settle_s=SETTLE_S)


def _warm_up(model: LoadedModel) -> float:
    """Three untimed runs (lazy first-run costs), then the mean seconds of three more: a fresh model's first runs
    would make its blocks too short."""
    run = runner(model)
    for _ in range(3):
        run()
    started = time.perf_counter()
    for _ in range(3):
        run()
    return (time.perf_counter() - started) / 3


@dataclass(eq=False)  # entrants are told apart by identity (the cut keeps or closes each one)
class Entrant:
    """A loaded model in the contest, with what it is measured by."""

    model: LoadedModel
    selection: Selection  # its backend trial
    artifact: Artifact
    result: VariantTrial  # what the device status shows for it
    ratio: float = 1.0  # head-to-head p50 relative to the original


class Contest:
    """The original and its variants on this device. Each variant that agrees with the original is timed turn about
    against it; the original and the variants at most RUNOFF_MARGIN slower than it stay loaded, and a round-robin
    run-off among them picks the one that serves."""

    def __init__(self, original: Entrant, inputs: list[dict[str, Any]] | None = None) -> None:
        self.original = original
        self.results = [original.result]
        self.finalists = [original]
        self.inputs = inputs  # what agreement is judged on (None: the original's representative inputs)

    def passed_over(self, variant: str | None, error: str) -> None:
        self.results.append(VariantTrial(variant=variant, error=error))

    def enter(self, entrant: Entrant) -> None:
        """Check a loaded variant against the original, time it, and keep it loaded only if it can still win."""
        model, result = entrant.model, entrant.result
        self.results.append(result)
        result.backend = model.backend.label
        try:  # a variant that loads but fails to run here is left out; the original and the others still compete
            similarity = agreement(self.original.model, model, self.inputs)
            result.cosine = similarity
            if similarity is not None and similarity < MIN_COSINE:
                result.error = f"disagrees with the original here (cosine {similarity:.4f} < {MIN_COSINE})"
            else:
                mine, theirs = head_to_head(model, self.original.model)
        except Exception as exc:
            result.error = f"fails to run here: {str(exc)[:200]}"
        if result.error is not None:
            model.backend.close()
            return
        entrant.ratio = mine / theirs
        result.vs_original = round(entrant.ratio, 4)
        result.p50_ms = _p50(self.original.result) * entrant.ratio
        self.finalists.append(entrant)
        self._cut()

    def _cut(self) -> None:
        """Keep the variants not clearly slower than the original, the best MAX_FINALISTS - 1 by ratio. Measured
        against the original, not the best ratio: one flattering head-to-head (seen: 0.60 for a variant the run-off
        put at 1.02) then takes one place in the run-off instead of pushing the others out."""
        ranked = sorted(self.finalists[1:], key=lambda f: f.ratio)
        close = [f for f in ranked if f.ratio <= 1 + RUNOFF_MARGIN][: MAX_FINALISTS - 1]
        for dropped in (f for f in ranked if f not in close):
            dropped.model.backend.close()
        self.finalists = [self.original, *close]

    def decide(self) -> Entrant:
        """Run the run-off (when a variant reached it), close every loser, and return the winner; each timed
        result's p50 is then on the run-off's scale (the run-off's own number, or the original's times its ratio)."""
        if len(self.finalists) > 1:
            times = [round(p50, 4) for p50 in runoff([f.model for f in self.finalists])]
            for finalist, p50 in zip_strict(self.finalists, times):
                finalist.result.runoff_p50_ms = p50
            scale = times[0]
            for result in self.results[1:]:
                if result.vs_original is not None:
                    result.p50_ms = result.runoff_p50_ms or scale * result.vs_original
            self.original.result.p50_ms = scale
        winner = min(self.finalists, key=lambda f: _p50(f.result))
        for loser in self.finalists:
            if loser is not winner:
                loser.model.backend.close()
        return winner


def cosine(a: Any, b: Any) -> float:
    import numpy as np

    x, y = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if x.shape != y.shape:
        return 0.0
    denominator = float(np.linalg.norm(x) * np.linalg.norm(y))
    return float(x @ y / denominator) if denominator else float(np.allclose(x, y))


def agreement(
    original: LoadedModel, candidate: LoadedModel, judged_on: list[dict[str, Any]] | None = None
) -> float | None:
    """The worst cosine similarity of the first output over `judged_on` (default: the original's representative
    inputs); None when the signatures differ (e.g. a TFLite variant taking NHWC: agreement was measured on the
    controller)."""
    if [(s.name, s.shape) for s in original.backend.inputs] != [(s.name, s.shape) for s in candidate.backend.inputs]:
        return None
    worst = 1.0
    for inputs in judged_on or original.probe:
        want = next(iter(original.backend.infer(inputs).values()))
        got = next(iter(candidate.backend.infer(inputs).values()))
        worst = min(worst, cosine(want, got))
    return worst


def _p50(result: VariantTrial) -> float:
    """A timed entrant's p50 (every finalist has one)."""
    assert result.p50_ms is not None, result
    return result.p50_ms


def describe(results: list[VariantTrial], winner: VariantTrial) -> str:
    original = next((r for r in results if r.variant == "original" and r.p50_ms is not None), None)
    head = f"{winner.variant} on {winner.backend}: p50 {_p50(winner):.3f} ms"
    if original is not None and winner is not original:
        head += f" vs original {_p50(original):.3f} ms"
    finalists = [str(r.variant) for r in results if r.runoff_p50_ms is not None]
    if len(finalists) > 1:
        head += f" (run-off among {', '.join(finalists)})"
    others = [r for r in results if r is not winner]
    failed = [f"{r.variant} ({r.error})" for r in others if r.error]
    slower = [str(r.variant) for r in others if not r.error]
    if slower:
        head += f"; slower here: {', '.join(slower)}"
    if failed:
        head += f"; passed over: {', '.join(failed)}"
    return head


Load = Callable[["Artifact"], "Loaded"]  # an artifact of the target, loaded and warm


def judging_inputs(original: LoadedModel, described: str) -> tuple[list[dict[str, Any]], str]:
    """What variants' agreement is judged on, and that in words for the status: this device's live inputs once its
    reservoir holds MIN_LIVE that run on the original, else the samples given with the version, else whatever live
    inputs there are, synthetic inputs only where no real one exists. `described`: the trial's word for its inputs."""
    reservoir = original.tap.reservoir if original.tap is not None else None
    live = reservoir.snapshot() if reservoir is not None else []
    if live:
        try:
            original.backend.infer(live[0])  # kept under this name by an older version: it may not fit this one
        except Exception as exc:
            log.info("live inputs do not fit %s %s: %s", original.name, original.version, exc)
            live = []
    synthetic = described.startswith("synthetic") or not original.probe
    if len(live) >= MIN_LIVE or (live and synthetic):
        return live, f"{len(live)} live input(s) kept by this device's reservoir"
    if synthetic and reservoir is not None:
        return list(original.probe), f"{described}: no real input yet (the reservoir holds none that fit)"
    return list(original.probe), described


@dataclass(frozen=True)
class Chosen:
    """What serves the target: the winner loaded, its selection for the status, and the file it was loaded from."""

    model: LoadedModel
    selection: Selection
    artifact: Artifact


def choose(target: DesiredModel, artifacts: list[Artifact], left_out: dict[str, str], load: Load) -> Chosen:
    """The original alone, or the fastest of original and variants that agree with it on this device; `left_out`:
    variants that could not be fetched or verified, with why. The selection gains `variants` and the contest's time."""
    original_artifact = artifacts[0]
    first_load = load(original_artifact)
    original, selection = first_load.model, first_load.selection
    inputs = original.sample()
    if (len(artifacts) == 1 and not target.variants) or inputs is None:  # nothing to compare or time variants on
        return Chosen(original, selection, original_artifact)
    started = time.monotonic()
    for _ in range(3):
        original.backend.infer(inputs)  # warm-up: the first runs are not the model's speed
    first = VariantTrial(variant="original", backend=original.backend.label, p50_ms=p50_ms(original, TIMED_RUNS))
    judged_on, on = judging_inputs(original, selection.inputs or "")
    contest = Contest(Entrant(original, selection, original_artifact, first), judged_on)
    for variant, error in left_out.items():
        contest.passed_over(variant, error)
    for artifact in artifacts[1:]:
        try:
            loaded = load(artifact)
        except (BackendError, SampleError) as exc:
            contest.passed_over(artifact.variant, f"does not load: {str(exc)[:200]}")
            continue
        model = replace(loaded.model, sha256=target.sha256, artifact_sha256=artifact.sha256, variant=artifact.variant)
        contest.enter(Entrant(model, loaded.selection, artifact, VariantTrial(variant=artifact.variant)))
    winner = contest.decide()
    chosen = winner.selection.model_copy(
        update={
            "variants": contest.results,
            "reason": f"{describe(contest.results, winner.result)}; agreement judged on {on}",
            "agreement_on": on,
            "variants_trial_s": round(time.monotonic() - started, 2),  # loading, checking and timing them all
        }
    )
    return Chosen(winner.model, chosen, winner.artifact)
