"""Rollouts in `/metrics` (Prometheus text format 0.0.4): each recent rollout's state and current wave, and each
decided wave's gate results and p95 ratio per hardware class. Bounded: the MAX_ROLLOUTS newest rollouts, classes as
the fleet has them (a handful), gates a fixed set."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

MAX_ROLLOUTS = 20
STATES = ("planned", "running", "paused", "halted", "completed", "aborted")
GATES = ("activation", "harm", "evidence", "latency", "errors", "agreement")


def _labels(**labels: Any) -> str:
    def escape(value: Any) -> str:
        return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    return "{" + ",".join(f'{k}="{escape(v)}"' for k, v in labels.items()) + "}"


def render(rollouts: Sequence[dict[str, Any]]) -> str:
    """The rollout families as text (rows as the store holds them, oldest first)."""
    recent = list(rollouts)[-MAX_ROLLOUTS:]
    state = ["# HELP edge_rollout_state 1 for the state each rollout is in.", "# TYPE edge_rollout_state gauge"]
    wave = ["# HELP edge_rollout_wave The wave each rollout is at (1-based).", "# TYPE edge_rollout_wave gauge"]
    gate = [
        "# HELP edge_rollout_gate 1 for each gate's result per decided wave and hardware class.",
        "# TYPE edge_rollout_gate gauge",
    ]
    ratio = [
        "# HELP edge_rollout_p95_ratio Median over devices of p95(new)/p95(previous), per wave and class.",
        "# TYPE edge_rollout_p95_ratio gauge",
    ]
    for r in recent:
        who = {"rollout": r["id"], "model": r["model"], "version": r["version"]}
        for s in STATES:
            state.append(f"edge_rollout_state{_labels(**who, state=s)} {1 if r['state'] == s else 0}")
        wave.append(f"edge_rollout_wave{_labels(**who)} {r['wave'] + 1}")
        for w in r["waves"]:
            for hw_class, figures in (w.get("classes") or {}).items():
                where = {"rollout": r["id"], "wave": w["index"] + 1, "hw_class": hw_class}
                for name in GATES:
                    if isinstance(figures.get(name), dict):
                        result = figures[name].get("verdict", "inconclusive")
                        gate.append(f"edge_rollout_gate{_labels(**where, gate=name, result=result)} 1")
                value = (figures.get("latency") or {}).get("median_p95_ratio")
                if value is not None:
                    ratio.append(f"edge_rollout_p95_ratio{_labels(**where)} {float(value)!r}")
    return "\n".join(state + wave + gate + ratio) + "\n"
