"""Per-model inference statistics, recorded on the request path in about a microsecond.

`ModelStats.record` is called by `LoadedModel.infer` (so the v2 HTTP API and MQTT RPC both count) with the latency
and the outputs. It bumps counters and one fixed log-spaced latency bucket (bisect on `protocol.LATENCY_BOUNDS_MS`,
the bounds the controller uses too, so histograms merge across windows and devices). Output statistics are costlier
on large tensors, so they are *sampled*: the outputs of one request in every N are summarised, and at most
`max_elements` (default 4096, taken with a stride) of each output are looked at. N is `sample_every` (default 16),
raised where one summary of this model's outputs costs more than N x `budget_us` (default 2.5 µs): the amortized
cost of recording stays within the budget whatever the outputs' size (the latency part costs about 1.5 µs more).
Nothing here imports numpy at module level: the sampled path finds it loaded (a model is serving).
"""

from __future__ import annotations

import math
import threading
from bisect import bisect_left
from time import perf_counter
from typing import Any

from agent.telemetry.classes import TASKS, ClassMix, class_scores
from agent.telemetry.quality import ElementStats, InputSummary, rows_of
from protocol import LATENCY_BOUNDS_MS, LATENCY_BUCKETS, ModelTelemetry, OutputStats
from protocol.quality import MAX_TELEMETRY_INPUTS

DEFAULT_SAMPLE_EVERY = 16
DEFAULT_MAX_ELEMENTS = 4096
DEFAULT_BUDGET_US = 2.5  # amortized output-statistics cost per request
SMALL = 256  # outputs up to this many elements are summarised in Python (cheaper than numpy calls)


class _Running:
    """Mergeable running statistics of one output (Chan et al. parallel mean/variance)."""

    __slots__ = (
        "sampled", "count", "mean", "m2", "min", "max", "nan", "inf", "mix", "declared", "elements",
    )  # fmt: skip

    def __init__(self) -> None:
        self.sampled = 0
        self.count = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.min = math.inf
        self.max = -math.inf
        self.nan = 0
        self.inf = 0
        self.mix = ClassMix()  # classifier outputs: the class mix and top-1 confidence (classes.py)
        self.declared = False  # a classifier declared at push
        self.elements = ElementStats()  # per element over rows (protocol/quality.py)

    def add(self, array: Any, max_elements: int, task: str | None = None) -> None:
        self.sampled += 1
        kind = getattr(getattr(array, "dtype", None), "kind", "")
        if not kind or kind not in "fiub" or array.size == 0:
            return
        scores = class_scores(array, task)
        self.declared = task == "classifier"
        found = rows_of(array, max_elements)
        if found is not None:
            self.elements.add(*found)
        if array.size <= SMALL:  # a few numpy calls cost more than Python on a short list
            self._add_small(array, scores)
        else:
            self._add_large(array, max_elements, scores)

    def _merge(self, n: int, mean: float, m2: float, low: float, high: float) -> None:
        count = self.count + n
        delta = mean - self.mean
        self.mean += delta * n / count
        self.m2 += m2 + delta * delta * self.count * n / count
        self.count = count
        if low < self.min:
            self.min = low
        if high > self.max:
            self.max = high

    def _add_small(self, array: Any, scores: Any) -> None:
        values = array.reshape(-1).tolist()
        total = sum(values)
        if not math.isfinite(total):
            finite = [v for v in values if math.isfinite(v)]
            nan = sum(1 for v in values if v != v)
            self.nan += nan
            self.inf += len(values) - len(finite) - nan
            values, total, scores = finite, sum(finite), None
            if not values:
                return
        n = len(values)
        mean = total / n
        self._merge(n, mean, sum((v - mean) ** 2 for v in values), min(values), max(values))
        if scores is not None:
            self.mix.add_rows(scores.tolist())

    def _add_large(self, array: Any, max_elements: int, scores: Any) -> None:
        import numpy as np  # already loaded: a model is serving

        flat = array.reshape(-1)
        if flat.size > max_elements:
            flat = flat[:: -(-flat.size // max_elements)]
        values = flat if flat.dtype == np.float64 else flat.astype(np.float64)
        total = float(values.sum())
        if not math.isfinite(total):  # rare: count NaN/Inf, then summarise the finite rest
            finite = np.isfinite(values)
            nan = int(np.isnan(values).sum())
            self.nan += nan
            self.inf += int(values.size - finite.sum()) - nan
            values = values[finite]
            if values.size == 0:
                return
            total = float(values.sum())
            scores = None
        n = int(values.size)
        mean = total / n
        m2 = max(0.0, float(np.dot(values, values)) - n * mean * mean)
        self._merge(n, mean, m2, float(values.min()), float(values.max()))
        if scores is not None:
            self.mix.add_array(scores, max_elements)

    def stats(self) -> OutputStats:
        return OutputStats(
            sampled=self.sampled,
            count=self.count,
            mean=self.mean,
            std=math.sqrt(self.m2 / self.count) if self.count else 0.0,
            min=self.min if self.count else None,
            max=self.max if self.count else None,
            nan=self.nan,
            inf=self.inf,
            elements=self.elements.wire(),
            **self.mix.wire(self.declared),
        )


class ModelStats:
    """One model version's counters for the current window; `take()` hands the window over and starts a new one."""

    __slots__ = (
        "name", "version", "sample_every", "max_elements", "_lock", "requests", "errors", "latency",
        "latency_sum", "latency_max", "outputs", "_tick", "budget_us", "period", "inputs", "task",
    )  # fmt: skip

    def __init__(
        self,
        name: str,
        version: str,
        sample_every: int = DEFAULT_SAMPLE_EVERY,
        max_elements: int = DEFAULT_MAX_ELEMENTS,
        budget_us: float | None = DEFAULT_BUDGET_US,
        task: str | None = None,
    ) -> None:
        self.name = name
        self.version = version
        self.task = task if task in TASKS else None  # declared at push; None: detected from the output's shape
        self.sample_every = max(1, sample_every)
        self.period = self.sample_every  # requests per sampled one: sample_every, raised to keep within budget_us
        self.budget_us = budget_us
        self.max_elements = max(1, max_elements)
        self._lock = threading.Lock()
        self._tick = 0
        self._reset()

    def _reset(self) -> None:
        self.requests = 0
        self.errors = 0
        self.latency = [0] * LATENCY_BUCKETS
        self.latency_sum = 0.0
        self.latency_max = 0.0
        self.outputs: dict[str, _Running] = {}
        self.inputs: dict[str, InputSummary] = {}

    def record(
        self, latency_ms: float, outputs: dict[str, Any] | None = None, inputs: dict[str, Any] | None = None
    ) -> None:
        """Count one answered request (the hot path: a lock, a bisect and a few adds); one in `period` also has its
        outputs and inputs summarised."""
        bucket = bisect_left(LATENCY_BOUNDS_MS, latency_ms)
        with self._lock:
            self.requests += 1
            self.latency[bucket] += 1
            self.latency_sum += latency_ms
            if latency_ms > self.latency_max:
                self.latency_max = latency_ms
            self._tick += 1
            if self._tick < self.period or outputs is None:
                return
            self._tick = 0
        self._sample(outputs, inputs)

    def _sample(self, outputs: dict[str, Any], inputs: dict[str, Any] | None = None) -> None:
        started = perf_counter()
        self._summarise(outputs)
        if inputs:
            self._summarise_inputs(inputs)
        if self.budget_us:
            cost_us = (perf_counter() - started) * 1e6
            wanted = max(self.sample_every, math.ceil(cost_us / self.budget_us))
            self.period = max(self.sample_every, (self.period * 3 + wanted) // 4)  # smoothed: one slow call is noise

    def _summarise(self, outputs: dict[str, Any]) -> None:
        for key, value in outputs.items():
            running = self.outputs.get(key)
            if running is None:
                if len(self.outputs) >= 16:
                    continue
                running = self.outputs.setdefault(key, _Running())
            try:
                with self._lock:
                    running.add(value, self.max_elements, self.task)
            except Exception:  # never let statistics fail a request
                continue

    def _summarise_inputs(self, inputs: dict[str, Any]) -> None:
        for key, value in inputs.items():
            summary = self.inputs.get(key)
            if summary is None:
                if len(self.inputs) >= MAX_TELEMETRY_INPUTS:
                    continue
                summary = self.inputs.setdefault(key, InputSummary())
            try:
                with self._lock:
                    summary.add(value, self.max_elements)
            except Exception:  # never let statistics fail a request
                continue

    def error(self) -> None:
        with self._lock:
            self.errors += 1

    def take(self) -> ModelTelemetry | None:
        """This window's numbers (None when nothing happened), and a fresh window."""
        with self._lock:
            if not self.requests and not self.errors:
                return None
            window = ModelTelemetry(
                name=self.name,
                version=self.version,
                requests=self.requests,
                errors=self.errors,
                latency=[(i, c) for i, c in enumerate(self.latency) if c],
                latency_sum_ms=round(self.latency_sum, 4),
                latency_max_ms=round(self.latency_max, 4),
                outputs={k: v.stats() for k, v in self.outputs.items() if v.sampled},
                inputs={k: v.wire() for k, v in self.inputs.items() if v.sampled},
            )
            self._reset()
        return window


class Recorder:
    """The ModelStats of every model version that served in this window."""

    def __init__(
        self,
        sample_every: int = DEFAULT_SAMPLE_EVERY,
        max_elements: int = DEFAULT_MAX_ELEMENTS,
        budget_us: float | None = DEFAULT_BUDGET_US,
    ) -> None:
        self.sample_every = sample_every
        self.max_elements = max_elements
        self.budget_us = budget_us
        self._models: dict[tuple[str, str], ModelStats] = {}
        self._tasks: dict[tuple[str, str], str | None] = {}  # declared in the desired state (`declare`)
        self._lock = threading.Lock()

    def model(self, name: str, version: str) -> ModelStats:
        with self._lock:
            stats = self._models.get((name, version))
            if stats is None:
                task = self._tasks.get((name, version))
                stats = ModelStats(name, version, self.sample_every, self.max_elements, self.budget_us, task)
                self._models[(name, version)] = stats
            return stats

    def declare(self, name: str, version: str, task: str | None) -> None:
        """The task the desired state declares for a version (classifier, regression; None: detect from the
        shape), for its statistics now and once it loads."""
        with self._lock:
            if len(self._tasks) > 256:  # versions come and go: keep the newest declarations
                self._tasks.clear()
            self._tasks[(name, version)] = task
            stats = self._models.get((name, version))
            if stats is not None:
                stats.task = task if task in TASKS else None

    def take(self) -> list[ModelTelemetry]:
        with self._lock:
            models = list(self._models.values())
        return [w for w in (m.take() for m in models) if w is not None]

    def forget(self, name: str, version: str) -> None:
        """Stop tracking a version that no longer serves (after its last window was taken)."""
        with self._lock:
            self._models.pop((name, version), None)
