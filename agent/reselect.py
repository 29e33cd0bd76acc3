"""Re-selection on live shapes: when most requests a model answers have shapes its trial never timed, the trial runs
again in the background on those requests, and its choice replaces the serving backend only when it agrees with
the serving one on them and is faster there (timed beside it on the same inputs, agent.shadow)."""

from __future__ import annotations

import logging
import statistics
import threading
from dataclasses import dataclass, field, replace
from typing import Any

from agent.loader import Loader, failover_status
from agent.reservoir import Signature, signature
from agent.rollback import Rollback
from agent.serving import LoadedModel, ModelTable
from agent.shadow import Pairs, run_pair
from agent.status_board import StatusBoard
from agent.store import ModelStore
from protocol.errors import EdgeError
from targets.inputs import SampleError

log = logging.getLogger(__name__)

MIN_UNTIMED = 4  # kept requests whose shapes the trial never timed, before a re-selection runs
MIN_SHARE = 0.5  # ... and at least this share of the kept requests
MAX_SAMPLES = 8  # live inputs the new trial runs on
COMPARE_ROUNDS = 4  # pairs per sample when the new choice is timed beside the serving one
FASTER_BY = 0.10  # the new choice must be at least this much faster (median of paired ratios)


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
    board: StatusBoard
    rollback: Rollback
    interval_s: float
    _tried: set[tuple[str, frozenset[Signature]]] = field(default_factory=set)

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(self.interval_s):
            for name in self.table.names():
                try:
                    self.check(name)
                except Exception:
                    log.exception("re-selection of %s failed", name)

    def check(self, name: str) -> str | None:
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
        outcome = self._reselect(model, live[:MAX_SAMPLES])
        log.info("%s %s: %s", name, model.version, outcome)
        return outcome

    def _reselect(self, model: LoadedModel, live: list[dict[str, Any]]) -> str:
        installed = self.store.records[model.name].serving
        assert installed is not None
        try:
            fresh, selection = self.loader.load(
                model.name, model.version, installed.sha256, installed.format, samples=live,
                hints=installed.input_shapes,
            )  # fmt: skip
        except (EdgeError, SampleError, OSError) as exc:
            return self._note(model, f"re-selection on {len(live)} live request inputs failed: {exc}")
        pairs = Pairs()
        for i in range(COMPARE_ROUNDS * len(live)):
            run_pair(fresh, model, live[i % len(live)], new_first=i % 2 == 0, pairs=pairs)
        if pairs.problem or not len(pairs) or pairs.agreed < len(pairs):
            why = pairs.problem or pairs.difference or "no live input ran on both"
            return self._note(model, f"kept {model.backend.label}: {fresh.backend.label} on live shapes: {why}")
        ratio = statistics.median(n / o for n, o in zip(pairs.new_ms, pairs.old_ms, strict=True) if o > 0)
        figures = f"p50 {statistics.median(pairs.new_ms):.3g} vs {statistics.median(pairs.old_ms):.3g} ms"
        if fresh.backend.label == model.backend.label or ratio > 1 - FASTER_BY:
            return self._note(model, f"kept {model.backend.label} on live shapes ({fresh.backend.label}: {figures})")
        return self._swap(model, fresh, selection, f"switched to {fresh.backend.label} on live shapes ({figures})")

    def _swap(self, model: LoadedModel, fresh: LoadedModel, selection: dict[str, Any], outcome: str) -> str:
        """Serve `fresh` as the same version (same identity, variant and attempt), unless something replaced
        `model` meanwhile."""
        same = replace(
            fresh, sha256=model.sha256, artifact_sha256=model.artifact_sha256, variant=model.variant,
            attempt=model.attempt,
        )  # fmt: skip
        with self.rollback.lock:
            if self.table.current(model.name) is not model:
                return "superseded while re-selecting"
            self.table.swap(same)
            record = self.store.records[model.name]
            assert record.serving is not None
            self.store.mark_serving(model.name, replace(record.serving, backend=fresh.backend.label))
        self.board.update_serving(
            model.name, backend=fresh.backend.label, selection={**selection, "live": outcome},
            failover=failover_status(fresh.backend),
        )  # fmt: skip
        return outcome

    def _note(self, model: LoadedModel, outcome: str) -> str:
        """Show a kept choice in the status' selection."""
        entry = self.board.get(model.name)
        if entry is not None and entry.selection is not None:
            current = entry.selection if isinstance(entry.selection, dict) else entry.selection.model_dump()
            self.board.update(model.name, selection={**current, "live": outcome})
        return outcome
