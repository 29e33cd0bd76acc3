"""Times loaded models turn about on their representative inputs, with the one timer (targets.timing).

The yardstick by which the agent chooses a variant and refuses a version slower than the serving one."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from targets.timing import Run, best_block_ms, turn_about


class Timed(Protocol):
    """A loaded model, as far as timing goes (agent.serving.table.LoadedModel is one)."""

    @property
    def backend(self) -> Any: ...

    def sample(self, index: int = 0) -> dict[str, Any] | None: ...


def runner(model: Timed) -> Run:
    """One inference of `model` on its first representative input."""
    inputs = model.sample() or {}
    backend = model.backend
    return lambda: backend.infer(inputs)


def best_ms(
    models: Sequence[Timed],
    *,
    q: float,
    rounds: int,
    block_s: float = 0.0,
    min_runs: int = 3,
    max_runs: int = 500,
    settle_s: float = 0.0,
) -> list[float]:
    """Each model's best round's q-th percentile (ms), the models' blocks taken in turn (targets.timing.turn_about):
    load on the box hits them all alike, and a round hit by a burst of other work does not count against one."""
    measured = turn_about(
        [runner(m) for m in models],
        rounds=rounds,
        block_s=block_s,
        min_runs=min_runs,
        max_runs=max_runs,
        settle_s=settle_s,
    )
    return [best_block_ms(rounds_of_one, q) for rounds_of_one in measured]


def p50_ms(model: Timed, runs: int) -> float:
    """The median of `runs` inferences in one block, in milliseconds."""
    return best_ms([model], q=50, rounds=1, min_runs=runs, max_runs=runs)[0]
