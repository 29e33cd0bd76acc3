"""The shadow check: before a swap, a new version answers copies of live requests beside the serving one (its
answers go nowhere), timed with it on the same inputs at the same moments, its outputs compared with the serving
version's. Only the two models' own calls are timed, one after the other from one thread, in alternating order:
whatever else loads the box (the clients, other models) weighs on both alike."""

from __future__ import annotations

import queue
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from protocol.compat import zip_strict
from targets.agreement import disagreement, nonfinite
from targets.base import BackendError

if TYPE_CHECKING:  # numpy: imported by the first check, not by an idle agent
    import numpy as np

    from agent.serving.live import Mirror
    from agent.serving.table import LoadedModel

Inputs = dict[str, "np.ndarray"]
IDLE_S = 1.0  # no request at all within this long: the model is idle, the samples decide at once
# Each pair is followed by a pause as long as it took: the check never takes more than half of one core from the
# clients (on a loaded 2-core box, pairs back to back pushed the clients' p99 up during an update).


@dataclass
class Pairs:
    """What the shadow check saw: each pair's milliseconds, and how the new version's answers compared."""

    new_ms: list[float] = field(default_factory=list)
    old_ms: list[float] = field(default_factory=list)
    agreed: int = 0
    problem: str | None = None  # why the new version is unhealthy (an error or NaN/Inf on a real input)
    difference: str | None = None  # the first disagreement seen (reported, not judged: a new version may differ)

    def __len__(self) -> int:
        return len(self.new_ms)

    def medians(self) -> tuple[float, float]:
        """p50 of the new version's and the serving version's milliseconds."""
        return statistics.median(self.new_ms), statistics.median(self.old_ms)

    def ratio(self) -> float:
        """The median of the paired ratios new/old: how much slower the new version is on the same inputs."""
        return statistics.median(n / o for n, o in zip_strict(self.new_ms, self.old_ms) if o > 0)


def run_pair(new: LoadedModel, old: LoadedModel, inputs: Inputs, new_first: bool, pairs: Pairs) -> None:
    """Both models on one input, back to back; records times, agreement, and a problem of the new version."""
    order = (new, old) if new_first else (old, new)
    answers = {id(model): _timed(model, inputs) for model in order}
    (new_out, new_s), (old_out, old_s) = answers[id(new)], answers[id(old)]
    if isinstance(old_out, BackendError):
        return  # an input the serving version cannot answer either: not the new version's fault
    if isinstance(new_out, BackendError):
        pairs.problem = f"error on a live request the serving version answers: {new_out}"
        return
    bad = nonfinite(new_out, inputs)
    if bad and not nonfinite(old_out, inputs):
        pairs.problem = f"{bad} on a live request the serving version answers with finite numbers"
        return
    pairs.new_ms.append(new_s * 1000)
    pairs.old_ms.append(old_s * 1000)
    difference = disagreement(new_out, old_out, f"version {old.version}")
    if difference is None:
        pairs.agreed += 1
    elif pairs.difference is None:
        pairs.difference = difference


def _timed(model: LoadedModel, inputs: Inputs) -> tuple[dict[str, Any] | BackendError, float]:
    """The model's outputs (or the BackendError it raised) and the seconds its backend took."""
    started = time.perf_counter()
    try:
        out: dict[str, Any] | BackendError = model.backend.infer(inputs)
    except BackendError as exc:
        out = exc
    return out, time.perf_counter() - started


def shadow(
    new: LoadedModel, old: LoadedModel, mirror: Mirror, *, window_s: float, max_pairs: int, stop: threading.Event
) -> Pairs:
    """Pairs from live requests mirrored during at most `window_s`, up to `max_pairs`; at once none when no request
    came within IDLE_S."""
    pairs = Pairs()
    started = time.monotonic()
    deadline = started + window_s
    while len(pairs) < max_pairs and pairs.problem is None and not stop.is_set():
        now = time.monotonic()
        left = deadline - now
        if left <= 0 or (mirror.queue.empty() and not mirror.seen and now - started > IDLE_S):
            break
        try:
            inputs = mirror.queue.get(timeout=min(left, 0.25))
        except queue.Empty:
            continue
        started_pair = time.perf_counter()
        run_pair(new, old, inputs, new_first=len(pairs) % 2 == 0, pairs=pairs)
        time.sleep(time.perf_counter() - started_pair)  # at most half of one core: the clients come first
    return pairs
