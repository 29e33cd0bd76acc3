"""Loads a version for serving: the backend its trial chose, failover to the runner-ups, warm-up."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.config import AgentConfig
from agent.fetch.store import ModelStore
from agent.serving.eviction import Admission, Residency
from agent.serving.live import LiveTaps
from agent.serving.table import LoadedModel
from agent.telemetry.stats import Recorder
from protocol import Failover, Selection
from protocol.status import Memory
from targets import trial_arena
from targets.base import Backend
from targets.failover import FailoverBackend
from targets.footprint import warm_up
from targets.inputs import Inputs
from targets.onnx_external import refuse_external_data
from targets.selection import Admit, candidates, load_candidate, select_backend
from targets.selection import Selection as Trial

if TYPE_CHECKING:
    from agent.deploy.downloads import Artifact
    from protocol import DesiredModel

FailoverChanged = Callable[[str, Failover], None]  # (model name, failover status)


def failover_status(backend: Backend) -> Failover | None:
    """What serves instead of the preferred backend and why (the status' `failover`); None without failover."""
    return Failover.model_validate(backend.status()) if isinstance(backend, FailoverBackend) else None


def reported(trial: Trial) -> Selection:
    """The trial's summary as the status reports it: the one conversion, the agent carries it typed from here."""
    return Selection.model_validate(trial.as_dict())


@dataclass(frozen=True)
class Loaded:
    """A version loaded and warm, with the trial's summary for the status; `stale`: served on a choice made on other
    hardware or runtimes (`defer_trial`), which agent.deploy.reselect replaces by a trial here."""

    model: LoadedModel
    selection: Selection
    stale: bool = False


@dataclass
class Loader:
    """Turns a stored artifact into a warm LoadedModel; `on_failover` hears each run-time failover of a model."""

    config: AgentConfig
    hardware: dict[str, Any]
    store: ModelStore
    recorder: Recorder
    on_failover: FailoverChanged
    taps: LiveTaps | None = None  # each loaded model's requests feed its name's reservoir and shadow mirror
    memory: Residency | None = None  # the memory budget: admits each load on its trial's footprint (or refuses)

    def load(
        self,
        name: str,
        version: str,
        sha256: str,
        model_format: str,
        *,
        backend: str | None = None,
        samples: list[Inputs] | None = None,
        hints: dict[str, list[int]] | None = None,
        defer_trial: bool = False,
    ) -> Loaded:
        """The model loaded on the backend its trial chose (cached per model and hardware) on representative inputs,
        with the trial's summary for the status; BackendError or SampleError when it cannot serve here."""
        path = self.store.path(sha256)
        if model_format == "onnx":
            refuse_external_data(path)  # whatever the installed runtime would check
        override = backend or self.config.backend
        memory = self.memory.loading(name, path.stat().st_size, not defer_trial) if self.memory else nullcontext()
        with memory as admission:  # the memory lock, room made, the footprint measured (agent/serving/eviction.py)
            admit = admission.admit if isinstance(admission, Admission) else None
            selection = self._select(path, model_format, sha256, override, samples, hints, defer_trial, admit)
            probe = tuple(selection.probe.sets)
            instance = selection.backend
            fallbacks = [] if override else self._fallbacks(selection, path, model_format)
            if fallbacks:
                instance = FailoverBackend(
                    instance,
                    fallbacks,
                    on_change=partial(self._failed_over, name),
                    probe=probe[0] if probe else None,
                )
            if probe:
                warm_up(instance, probe[0])
        tap = self.taps.get(name) if self.taps is not None else None
        stats = self.recorder.model(name, version)
        model = LoadedModel(name, version, sha256, instance, stats=stats, probe=probe, tap=tap)
        summary = reported(selection)
        if isinstance(admission, Admission):
            options = arena_of(selection) | openvino_cache_of(selection)
            summary.memory = Memory.model_validate(admission.report() | options)
        return Loaded(model, summary, selection.stale)

    def load_target(self, target: DesiredModel, samples: list[Inputs] | None, artifact: Artifact) -> Loaded:
        """One artifact of a desired version (the original or a variant), loaded as `load` does."""
        return self.load(
            target.name, target.version, artifact.sha256, artifact.format,
            backend=target.backend, samples=samples, hints=dict(target.input_shapes) or None,
        )  # fmt: skip

    def _failed_over(self, name: str, status: dict[str, Any]) -> None:
        self.on_failover(name, Failover.model_validate(status))

    def _select(
        self,
        path: Path,
        model_format: str,
        sha256: str,
        override: str | None,
        samples: list[Inputs] | None,
        hints: dict[str, list[int]] | None,
        defer_trial: bool = False,
        admit: Admit | None = None,
    ) -> Trial:
        cfg = self.config
        return select_backend(
            path,
            model_format,
            self.hardware,
            override=override,
            options=cfg.backend_options if override else None,
            trial=cfg.backend_trial,
            budget_s=cfg.trial_budget_s,
            cache_dir=Path(cfg.data_dir) / "selection",
            sha256=sha256,
            samples=samples,
            hints=hints,
            isolated=cfg.trial_isolated,
            defer_trial=defer_trial,
            admit=admit,
            arena_from_mb=self.memory.budget.limit_mb * trial_arena.BUDGET_SHARE if self.memory else 0.0,
        )

    def _fallbacks(self, selection: Trial, path: Path, model_format: str) -> list[tuple[str, Callable[[], Backend]]]:
        """The other candidates that agreed in the trial, fastest first, loaded only if the chosen one fails."""
        working = sorted(
            (r for r in selection.candidates if r.agreed and r.name != selection.choice and r.p50_ms is not None),
            key=lambda r: r.p50_ms or 0.0,
        )
        by_name = {c.name: c for c in candidates(model_format, self.hardware)}
        names = {
            "input_names": [s.name for s in selection.backend.inputs],
            "output_names": [s.name for s in selection.backend.outputs],
        }
        return [
            (r.name, partial(load_candidate, c, path, model_format, names if c.backend == "openvino" else None))
            for r in working
            if (c := by_name.get(r.name)) is not None
        ]


def arena_of(selection: Trial) -> dict[str, Any]:
    """ONNX Runtime's CPU memory arena as the selected backend runs it, and the trial's measurement that chose it,
    for the status' selection.memory (other runtimes: none)."""
    enabled = getattr(getattr(selection.backend, "config", None), "cpu_mem_arena", None)
    if not isinstance(enabled, bool):
        return {}
    chosen = next((r for r in selection.candidates if r.name == selection.choice and r.arena), None)
    return {"arena": "on" if enabled else "off"} | ({"arena_trial": chosen.arena} if chosen is not None else {})


def openvino_cache_of(selection: Trial) -> dict[str, str]:
    """OpenVINO CPU's runtime cache capacity and model cache as the selected backend runs them, for the status'
    selection.memory (other runtimes and devices: none)."""
    config = getattr(selection.backend, "config", None)
    if getattr(config, "type", None) != "openvino" or getattr(config, "device", None) != "CPU":
        return {}
    capacity = getattr(config, "runtime_cache_capacity", None)
    cache = "on" if getattr(config, "cache_dir", None) else "off"
    return {"runtime_cache": "default" if capacity is None else str(capacity), "model_cache": cache}
