"""Re-selection in the background: when most requests a model answers have shapes its trial never timed (the trial
runs again on those requests), and after a restart that found other hardware or runtimes (the model serves at once
on its earlier choice; the trial runs again on its own inputs). The new choice replaces the serving backend only
when it agrees with the serving one and is faster, timed beside it on the same inputs (agent.deploy.shadow). What
was decided is returned (Reselected) to the caller of `run`, agent.deploy.deployer, which shows it."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from agent.deploy.loader import Loaded, Loader
from agent.deploy.rollback import Rollback
from agent.deploy.shadow import Pairs, run_pair
from agent.fetch.store import ModelStore
from agent.serving.reservoir import Signature, signature
from agent.serving.table import LoadedModel, ModelTable
from protocol.errors import EdgeError
from targets.inputs import SampleError

log = logging.getLogger(__name__)

MIN_UNTIMED = 4  # kept requests whose shapes the trial never timed, before a re-selection runs
MIN_SHARE = 0.5  # ... and at least this share of the kept requests
MAX_SAMPLES = 8  # live inputs the new trial runs on
COMPARE_ROUNDS = 4  # pairs per sample when the new choice is timed beside the serving one
FASTER_BY = 0.10  # the new choice must be at least this much faster (median of paired ratios)


@dataclass(frozen=True)
class Reselected:
    """What a re-selection of `name` decided, in one line (`outcome`), for the status' selection under `field`
    ("live" or "retrial"); `serving`: the new choice, when it serves now (its selection replaces the one shown)."""

    name: str
    field: str
    outcome: str
    serving: Loaded | None = None


Report = Callable[[Reselected], None]


def untimed(model: LoadedModel, kept: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The kept request inputs whose shapes none of the model's representative inputs had."""
    timed = {signature(p) for p in model.probe}
    return [k for k in kept if signature(k) not in timed]


@dataclass
class Reselector:
    """Checks each serving model's reservoir every `interval_s`; at most one re-selection per model version and set
    of live shapes."""

    loader: Loader
    table: ModelTable
    store: ModelStore
    rollback: Rollback
    interval_s: float
    stored_samples: Callable[[str | None], list[dict[str, Any]] | None] = lambda sha256: None
    _tried: set[tuple[str, frozenset[Signature]]] = field(default_factory=set)
    _retrials: set[str] = field(default_factory=set)
    _wake: threading.Event = field(default_factory=threading.Event)

    def retrial(self, names: set[str]) -> None:
        """Run the trial again for these models soon (they serve on a choice made on other hardware or runtimes)."""
        self._retrials |= names
        self._wake.set()

    def run(self, stop: threading.Event, report: Report) -> None:
        """Until `stop`: each re-selection's decision goes to `report`."""
        while not stop.is_set():
            self._wake.wait(self.interval_s or None)
            self._wake.clear()
            for name in sorted(self._retrials):
                self._retrials.discard(name)
                self._guarded(self.retry_trial, name, report)
            if self.interval_s:
                for name in self.table.names():
                    self._guarded(self.check, name, report)

    def _guarded(self, step: Callable[[str], Reselected | None], name: str, report: Report) -> None:
        try:
            decided = step(name)
            if decided is not None:
                report(decided)
        except Exception:
            log.exception("re-selection of %s failed", name)

    def retry_trial(self, name: str) -> Reselected | None:
        """The trial on this hardware and runtimes, for a model restored on an earlier choice."""
        model = self.table.current(name)
        record = self.store.records.get(name)
        if model is None or record is None or record.serving is None:
            return None
        samples = self.stored_samples(record.serving.samples)
        return self._reselect(model, samples, list(model.probe), "retrial")

    def check(self, name: str) -> Reselected | None:
        """Re-select `name` if live shapes call for it; what was decided, in one line (None: nothing to do)."""
        model = self.table.current(name)
        record = self.store.records.get(name)
        if model is None or record is None or record.serving is None or model.tap is None:
            return None
        if model.watch is not None and model.watch.active or model.tap.reservoir is None:
            return None  # a fresh version in its health window, or no reservoir (capture off)
        kept = model.tap.reservoir.snapshot()
        live = untimed(model, kept)
        if len(live) < MIN_UNTIMED or len(live) < MIN_SHARE * len(kept):
            return None
        shapes = frozenset(signature(k) for k in live)
        if (model.sha256, shapes) in self._tried:
            return None
        self._tried.add((model.sha256, shapes))
        live = live[:MAX_SAMPLES]
        return self._reselect(model, live, live, "live")

    def _reselect(
        self, model: LoadedModel, samples: list[dict[str, Any]] | None, compare_on: list[dict[str, Any]], field: str
    ) -> Reselected | None:
        """Trial on `samples`; the new choice serves if it agrees with and beats the serving one on `compare_on`.
        What was decided, for the status' selection under `field` ("live" or "retrial"); None when something
        replaced the model meanwhile."""
        decided = self._decide(model, samples, compare_on, field)
        outcome = decided.outcome if decided is not None else "superseded while re-selecting"
        log.info("%s %s: %s", model.name, model.version, outcome)
        return decided

    def _decide(
        self, model: LoadedModel, samples: list[dict[str, Any]] | None, compare_on: list[dict[str, Any]], field: str
    ) -> Reselected | None:
        installed = self.store.records[model.name].serving
        assert installed is not None
        what = "on live shapes" if field == "live" else "on this hardware and runtimes"
        try:
            loaded = self.loader.load(
                model.name, model.version, installed.sha256, installed.format, samples=samples,
                hints=installed.input_shapes,
            )  # fmt: skip
        except (EdgeError, SampleError, OSError) as exc:
            return Reselected(model.name, field, f"the trial {what} failed: {exc}")
        fresh, pairs = loaded.model, Pairs()
        for i in range(COMPARE_ROUNDS * len(compare_on)):
            run_pair(fresh, model, compare_on[i % len(compare_on)], new_first=i % 2 == 0, pairs=pairs)
        if pairs.problem or not len(pairs) or pairs.agreed < len(pairs):
            why = pairs.problem or pairs.difference or "no input ran on both"
            return Reselected(model.name, field, f"kept {model.backend.label}: {fresh.backend.label} {what}: {why}")
        ratio, (new_p50, old_p50) = pairs.ratio(), pairs.medians()
        figures = f"p50 {new_p50:.3g} vs {old_p50:.3g} ms"
        if fresh.backend.label == model.backend.label or ratio > 1 - FASTER_BY:
            kept = f"kept {model.backend.label} {what} ({fresh.backend.label}: {figures})"
            return Reselected(model.name, field, kept)
        if not self._swap(model, fresh):
            return None
        return Reselected(model.name, field, f"switched to {fresh.backend.label} {what} ({figures})", loaded)

    def _swap(self, model: LoadedModel, fresh: LoadedModel) -> bool:
        """Serve `fresh` as the same version (same identity, variant and attempt), unless something replaced
        `model` meanwhile."""
        same = replace(
            fresh, sha256=model.sha256, artifact_sha256=model.artifact_sha256, variant=model.variant,
            attempt=model.attempt,
        )  # fmt: skip
        with self.rollback.lock:
            if self.table.current(model.name) is not model:
                return False
            self.table.swap(same)
            record = self.store.records[model.name]
            assert record.serving is not None
            self.store.mark_serving(model.name, replace(record.serving, backend=fresh.backend.label))
        return True
