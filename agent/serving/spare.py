"""Whether the agent keeps a spare trial worker, decided from its memory budget: the spare (targets/trial_spare.py,
every runtime imported) counts in the agent's memory cgroup, and on a small box that room belongs to the models."""

from __future__ import annotations

from dataclasses import dataclass

# A waiting spare with ONNX Runtime, OpenVINO and LiteRT imported and their one-time setup done (targets/footprint
# import_runtime): 147.1 MiB resident on the development box (x86_64, Python 3.11, all three runtimes installed; 2
# runs); 95.9 MiB before the setup moved into the spare. Fewer runtimes installed, less.
SPARE_MIB = 148.0
MAX_SHARE = 8  # a spare kept by the agent's own choice takes at most 1/8 of the budget
CAP_MIB = 384.0  # the most a spare may grow to before spares stop, when the agent decides


@dataclass(frozen=True)
class SpareChoice:
    """The cap passed to trial_spare.enable (0: no spare), whether the config set it, and why, in one line."""

    max_mb: float
    configured: bool
    reason: str

    @property
    def kept(self) -> bool:
        return self.max_mb > 0

    def report(self) -> dict[str, object]:
        return {"kept": self.kept, "max_mb": self.max_mb, "configured": self.configured, "reason": self.reason}


def choose_spare(
    configured_mb: float | None, isolated: bool, budget_mb: float, free_mb: float, spare_mb: float = SPARE_MIB
) -> SpareChoice:
    """A spare only with an isolated trial; `trial_spare_max_mb` when the config sets it (0: none), else one only
    where it takes at most 1/MAX_SHARE of the budget and fits in what is free now."""
    if not isolated:
        return SpareChoice(0.0, False, "no spare trial worker: the backend trial is off or not isolated")
    if configured_mb is not None:
        kept = f"a spare trial worker up to {configured_mb:g} MiB" if configured_mb > 0 else "no spare trial worker"
        return SpareChoice(configured_mb, True, f"{kept}: trial_spare_max_mb = {configured_mb:g} in the config")
    share = budget_mb / MAX_SHARE
    if spare_mb > share:
        return SpareChoice(
            0.0, False,
            f"no spare trial worker: it takes ~{spare_mb:.0f} MiB, over 1/{MAX_SHARE} of the {budget_mb:.0f} MiB "
            f"memory budget (set trial_spare_max_mb to keep one anyway)",
        )  # fmt: skip
    if free_mb < spare_mb:
        return SpareChoice(
            0.0, False,
            f"no spare trial worker: it takes ~{spare_mb:.0f} MiB, {free_mb:.0f} MiB of the {budget_mb:.0f} MiB "
            f"memory budget is free (set trial_spare_max_mb to keep one anyway)",
        )  # fmt: skip
    cap = min(CAP_MIB, share)
    return SpareChoice(
        cap, False,
        f"a spare trial worker up to {cap:.0f} MiB: ~{spare_mb:.0f} MiB is within 1/{MAX_SHARE} of the "
        f"{budget_mb:.0f} MiB memory budget",
    )  # fmt: skip
