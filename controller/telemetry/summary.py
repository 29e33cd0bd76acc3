"""A model version's quality summary on the controller: the quality fields of its telemetry windows
(protocol/quality.py) read into plain mergeable parts, one per output and input. Windows merge into a chunk to judge
or into a baseline; a summary turns into JSON and back (the stored baseline, the API)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from protocol.quality import merge_moments, merge_sketches, sketch_weight

Sketch = list[tuple[float, float]]


@dataclass
class Part:
    """One output or input over some rows: per-element moments, and where present the class counts (keyed by class
    index), the top-1 confidence histogram, what the classifier rows were (`scores`: probabilities, logits,
    declared; protocol/telemetry.py) and the row sketches."""

    rows: int = 0
    blocks: bool = False
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    classes: dict[str, int] | None = None
    top1: list[int] | None = None
    level: Sketch | None = None
    spread: Sketch | None = None
    scores: str | None = None

    @property
    def count(self) -> int:
        """The rows the largest of its statistics covers."""
        return max(
            self.rows,
            sum(self.classes.values()) if self.classes else 0,
            int(sketch_weight(self.level)),
        )

    def merged(self, other: Part) -> Part:
        """Both as one part (a statistic whose shape changed keeps the newer one: `other`)."""
        if self.mean and len(self.mean) == len(other.mean) and self.blocks == other.blocks:
            rows, mean, std = merge_moments(self.rows, self.mean, self.std, other.rows, other.mean, other.std)
        elif other.mean:
            rows, mean, std = other.rows, list(other.mean), list(other.std)
        else:
            rows, mean, std = self.rows, list(self.mean), list(self.std)
        classes = None
        if self.classes or other.classes:
            classes = dict(self.classes or {})
            for key, count in (other.classes or {}).items():
                classes[key] = classes.get(key, 0) + count
        if self.top1 and other.top1 and len(self.top1) == len(other.top1):
            top1: list[int] | None = [a + b for a, b in zip(self.top1, other.top1, strict=True)]
        else:
            top1 = list(other.top1 or self.top1 or []) or None
        return Part(
            rows=rows,
            blocks=other.blocks if other.mean else self.blocks,
            mean=mean,
            std=std,
            classes=classes,
            top1=top1,
            level=merge_sketches(self.level, other.level),
            spread=merge_sketches(self.spread, other.spread),
            scores=_merge_scores(self.scores, other.scores),
        )

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v not in (None, [], False, 0)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Part:
        part = cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
        part.level = [tuple(c) for c in part.level] if part.level else None  # type: ignore[misc]
        part.spread = [tuple(c) for c in part.spread] if part.spread else None  # type: ignore[misc]
        return part


@dataclass
class Summary:
    """A model version's outputs and inputs over `windows` telemetry windows."""

    windows: int = 0
    outputs: dict[str, Part] = field(default_factory=dict)
    inputs: dict[str, Part] = field(default_factory=dict)

    @property
    def count(self) -> int:
        """The rows of its best-covered part (the outputs and inputs of a request are sampled together)."""
        return max((p.count for p in (*self.outputs.values(), *self.inputs.values())), default=0)

    def merged(self, other: Summary) -> Summary:
        return Summary(
            windows=self.windows + other.windows,
            outputs=_merge_parts(self.outputs, other.outputs),
            inputs=_merge_parts(self.inputs, other.inputs),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "windows": self.windows,
            "outputs": {k: p.to_json() for k, p in self.outputs.items()},
            "inputs": {k: p.to_json() for k, p in self.inputs.items()},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Summary:
        return cls(
            windows=int(data.get("windows", 0)),
            outputs={k: Part.from_json(v) for k, v in (data.get("outputs") or {}).items()},
            inputs={k: Part.from_json(v) for k, v in (data.get("inputs") or {}).items()},
        )


def _merge_scores(a: str | None, b: str | None) -> str | None:
    """Windows that disagree on what the rows were are logits (their per-element tests stay); unknown is neutral."""
    if a is None or b is None or a == b:
        return b or a
    return b if {a, b} == {"probabilities", "declared"} else "logits"


def _merge_parts(a: dict[str, Part], b: dict[str, Part]) -> dict[str, Part]:
    merged = dict(a)
    for key, part in b.items():
        merged[key] = merged[key].merged(part) if key in merged else part
    return merged


def from_window(model: Any) -> Summary | None:
    """A telemetry window's quality summary (a FastModelTelemetry or a pydantic ModelTelemetry); None when the
    window carries no quality statistics (an older agent, or nothing sampled)."""
    outputs: dict[str, Part] = {}
    for name, stats in model.outputs.items():
        elements = stats.elements
        if elements is None and not stats.classes:
            continue
        counts = getattr(stats, "class_counts", None)  # every class by index, where `classes` names only 31
        classes = {str(i): c for i, c in counts} if counts else dict(stats.classes) if stats.classes else None
        part = Part(classes=classes, top1=list(stats.top1_hist or []) or None, scores=getattr(stats, "scores", None))
        if elements is not None and elements.rows:
            part.rows, part.blocks, part.mean, part.std = elements.rows, elements.blocks, elements.mean, elements.std
        outputs[name] = part
    inputs: dict[str, Part] = {}
    for name, stats in (getattr(model, "inputs", None) or {}).items():
        part = Part(
            level=[(c[0], c[1]) for c in stats.level] if stats.level else None,
            spread=[(c[0], c[1]) for c in stats.spread] if stats.spread else None,
        )
        elements = stats.elements
        if elements is not None and elements.rows:
            part.rows, part.blocks, part.mean, part.std = elements.rows, elements.blocks, elements.mean, elements.std
        if part.count:
            inputs[name] = part
    if not outputs and not inputs:
        return None
    return Summary(windows=1, outputs=outputs, inputs=inputs)
