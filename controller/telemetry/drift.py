"""Drift verdicts: a window of a model version's quality summary against its baseline, one test per statistic, each
sized to the sample (a pure function: ingest, the fleet comparison and rollout gates call the same one).

Per output: the class mix (two-sample chi-square on the argmax counts, PSI for the size of the move), the top-1
confidence histogram (the same), and each element (or block) of small outputs (z-test on the mean, a normal-theory
test on the variance; the size is the symmetric KL divergence of two normals, d^2 for a mean shift of d std, on
PSI's scale). Per input: each element the same way, and the sketches of each row's mean and std: PSI over the
baseline's deciles (chi-square sized) and a two-sample Kolmogorov-Smirnov test on the sketches' CDFs (the sketch's
resolution taken off the distance, its weights the sample sizes); the finding says which fired. A statistic is
tested only when the baseline and the window each hold
`min_rows` rows of it; a finding flags when its p-value is below `alpha` divided by the number of tests made
(Bonferroni: the verdict's false-alarm rate stays below `alpha` whatever the model's size) and its PSI reaches
`psi_min` (a significant but tiny move on a large sample is not drift). No scipy: the chi-square and normal tails
are computed here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from controller.telemetry.summary import Part, Summary
from protocol.quality import sketch_cdf, sketch_quantile, sketch_weight

EPS = 1e-12
DECILES = tuple(i / 10 for i in range(1, 10))
MAX_DIVERGENCE = 1e3
MIN_EXPECTED = 5  # a class's expected rows in a window before it has a bin of its own (chi-square's rule of thumb)
DISTRIBUTIONS = ("probabilities", "declared")  # outputs the class mix and top-1 confidence judge alone


@dataclass(frozen=True)
class DriftSettings:
    min_rows: int = 200  # rows of a statistic in the window (and in the baseline) before it is tested
    baseline_rows: int = 400  # rows the baseline gathers from a version's first windows
    alpha: float = 1e-3  # the family-wise false-alarm rate of one verdict
    psi_min: float = 0.25  # the smallest move that is drift (PSI's "significant shift")
    # the variance test allows rows this heavy-tailed (a normal's is 3): a detector's block outputs, a few scenes
    # with an object among many without, are far from normal, and a normal-theory test flagged their spread
    kurtosis: float = 9.0
    ks_min: float = 0.15  # the smallest KS distance (less the sketches' resolution) that is drift: about PSI 0.25


DEFAULT_SETTINGS = DriftSettings()


@dataclass
class Finding:
    """One statistic's test: what it compares, how far it moved (PSI scale), its p-value and the sentence."""

    kind: str  # class_mix, confidence, elements, level, spread
    tensor: str
    side: str  # output or input
    psi: float
    p_value: float
    flagged: bool = False
    text: str = ""
    tests: int = 1
    ks: tuple[float, float] | None = None  # sketches: (KS distance, its p-value), beside PSI's
    fired: list[str] = field(default_factory=list)  # which tests flagged it: "psi", "ks", "chi-square", "z"

    def to_json(self) -> dict[str, Any]:
        data = {
            "kind": self.kind, "side": self.side, "tensor": self.tensor, "psi": round(self.psi, 4),
            "p_value": float(f"{self.p_value:.3g}"), "flagged": self.flagged, "text": self.text, "fired": self.fired,
        }  # fmt: skip
        if self.ks is not None:
            data["ks_d"], data["ks_p"] = round(self.ks[0], 4), float(f"{self.ks[1]:.3g}")
        return data


@dataclass
class Verdict:
    """The window against the baseline: `judged` once a statistic could be tested; `flagged` when one moved."""

    judged: bool = False
    flagged: bool = False
    score: float = 0.0  # the largest move (PSI scale) among the tested statistics
    tests: int = 0
    findings: list[Finding] = field(default_factory=list)
    baseline_rows: int = 0
    window_rows: int = 0
    reason: str = ""  # why nothing was judged

    @property
    def moved(self) -> list[str]:
        """What moved, largest first."""
        return [f.text for f in self.findings if f.flagged]

    def to_json(self) -> dict[str, Any]:
        return {
            "judged": self.judged, "flagged": self.flagged, "score": round(self.score, 4), "tests": self.tests,
            "moved": self.moved, "baseline_rows": self.baseline_rows, "window_rows": self.window_rows,
            "reason": self.reason, "findings": [f.to_json() for f in self.findings[:8]],
        }  # fmt: skip


# -- tails -------------------------------------------------------------------------------------------------------


def normal_sf2(z: float) -> float:
    """Two-sided tail of the standard normal: P(|Z| > |z|)."""
    return math.erfc(abs(z) / math.sqrt(2.0))


def chi2_sf(x: float, dof: int) -> float:
    """P(X > x) for X ~ chi-square(dof): the regularized upper incomplete gamma Q(dof/2, x/2)."""
    if x <= 0 or dof <= 0:
        return 1.0
    a, y = dof / 2.0, x / 2.0
    if y < a + 1:  # series for P, Q = 1 - P
        term = total = 1.0 / a
        n = a
        for _ in range(500):
            n += 1
            term *= y / n
            total += term
            if abs(term) < abs(total) * 1e-15:
                break
        return max(0.0, 1.0 - total * math.exp(-y + a * math.log(y) - math.lgamma(a)))
    b = y + 1 - a  # continued fraction for Q (Lentz)
    c, d = 1.0 / 1e-300, 1.0 / b
    h = d
    for i in range(1, 500):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = 1e-300 if abs(d) < 1e-300 else d
        c = b + an / c
        c = 1e-300 if abs(c) < 1e-300 else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1) < 1e-15:
            break
    return min(1.0, math.exp(-y + a * math.log(y) - math.lgamma(a)) * h)


def binomial_sf(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), summed exactly (n is a class's rows in a baseline and a window)."""
    if k <= 0:
        return 1.0
    if k > n or p <= 0:
        return 0.0
    if p >= 1:
        return 1.0
    log_p, log_q, head = math.log(p), math.log1p(-p), math.lgamma(n + 1)
    total = 0.0
    for x in range(k, n + 1):
        term = math.exp(head - math.lgamma(x + 1) - math.lgamma(n - x + 1) + x * log_p + (n - x) * log_q)
        total += term
        if term < total * 1e-17 and x > n * p:
            break
    return min(1.0, total)


def kolmogorov_sf(x: float) -> float:
    """P(K > x) for the Kolmogorov distribution (the two-sample KS statistic times its sample-size factor)."""
    if x < 0.18:
        return 1.0
    total = sum((-1) ** (k - 1) * math.exp(-2.0 * k * k * x * x) for k in range(1, 101))
    return min(1.0, max(0.0, 2.0 * total))


def ks_sketches(base: Any, window: Any) -> tuple[float, float]:
    """(distance, p-value) of the two-sample KS test on two quantile sketches: the largest CDF gap over both
    sketches' centroids, less the sketches' resolution (half the heaviest centroid's share of each: what
    interpolating between centroids may be off by), with the sketches' weights (rows) as the sample sizes."""
    nb, nw = sketch_weight(base), sketch_weight(window)
    if nb <= 0 or nw <= 0:
        return 0.0, 1.0
    points = sorted({v for v, _ in base} | {v for v, _ in window})
    gap = max(abs(sketch_cdf(base, x) - sketch_cdf(window, x)) for x in points)
    resolution = max(w for _, w in base) / (2 * nb) + max(w for _, w in window) / (2 * nw)
    distance = max(0.0, gap - resolution)
    en = math.sqrt(nb * nw / (nb + nw))
    return distance, kolmogorov_sf((en + 0.12 + 0.11 / en) * distance)  # Stephens' small-sample correction


def psi(base: list[float], window: list[float]) -> float:
    """Population stability index of two distributions over the same bins (proportions, already smoothed)."""
    return sum((w - b) * math.log(w / b) for b, w in zip(base, window, strict=True))


def _proportions(counts: list[float], n: float) -> list[float]:
    k = len(counts)
    return [(c + 0.5) / (n + 0.5 * k) for c in counts]  # a zero count does not make PSI infinite


def _binned(base: list[float], window: list[float], n_base: float, n_window: float) -> tuple[float, float]:
    """(PSI, chi-square p-value) of two binned counts: PSI x n_b n_w / (n_b + n_w) ~ chi-square(bins - 1)."""
    value = psi(_proportions(base, n_base), _proportions(window, n_window))
    statistic = value / (1.0 / n_base + 1.0 / n_window)
    return value, chi2_sf(statistic, len(base) - 1)


# -- the tests ---------------------------------------------------------------------------------------------------


def _class_bins(base: dict[str, int], n_window: float) -> set[str]:
    """The classes that keep a bin of their own: expected at least MIN_EXPECTED times in a window of `n_window` rows at
    the baseline's shares. The others (rare in the baseline, or absent from it) share one bin: decided from the
    baseline alone, so every window compared with it is binned alike whatever classes it happens to see."""
    total = sum(base.values())
    return {k for k, c in base.items() if total and c / total * n_window >= MIN_EXPECTED}


def _class_mix(name: str, base: dict[str, int], window: dict[str, int], settings: DriftSettings) -> list[Finding]:
    """The class mix over the baseline's bins (chi-square, PSI), and where classes share the rare bin, the rare class
    that rose most on its own (an exact two-sample test: a class the baseline barely saw becoming common moves the
    shared bin little where many rare classes fill it)."""
    own = _class_bins(base, settings.min_rows)
    keys = sorted(set(base) | set(window), key=lambda k: (not k.isdigit(), int(k) if k.isdigit() else 0, k))
    b = [float(base.get(k, 0)) for k in keys if k in own]
    w = [float(window.get(k, 0)) for k in keys if k in own]
    rare = [k for k in keys if k not in own]
    nb, nw = float(sum(base.values())), float(sum(window.values()))
    if rare:
        b.append(nb - sum(b))
        w.append(nw - sum(w))
    value, p = _binned(b, w, nb, nw) if len(b) > 1 else (0.0, 1.0)
    moved = max(keys, key=lambda k: abs(window.get(k, 0) / nw - base.get(k, 0) / nb))  # named on its own shares
    findings = [Finding("class_mix", name, "output", value, p, text=_class_text(name, moved, base, window, value))]
    if rare:
        findings.append(_rare_class(name, rare, base, window, settings))
    return findings


def _class_text(name: str, key: str, base: dict[str, int], window: dict[str, int], value: float) -> str:
    label = f"class {key}" if key.isdigit() else key
    share_b, share_w = base.get(key, 0) / sum(base.values()), window.get(key, 0) / sum(window.values())
    return f"class mix of {name}: {label} {share_b:.2f} → {share_w:.2f}, PSI {value:.2g}"


def _rare_class(
    name: str, rare: list[str], base: dict[str, int], window: dict[str, int], settings: DriftSettings
) -> Finding:
    """The rare class whose rise is largest: its share against the rest (PSI), its count given the class's count in
    both (binomial, exact for small counts), Bonferroni over the rare classes."""
    nb, nw = sum(base.values()), sum(window.values())
    best = Finding("class_mix", name, "output", 0.0, 1.0, text=f"class mix of {name}: no rare class rose")
    for key in rare:
        cb, cw = base.get(key, 0), window.get(key, 0)
        if cw / nw <= cb / nb:
            continue
        size = psi(_proportions([float(cb), float(nb - cb)], nb), _proportions([float(cw), float(nw - cw)], nw))
        if size < settings.psi_min or size <= best.psi:
            continue
        p = min(1.0, binomial_sf(cw, cb + cw, nw / (nb + nw)) * len(rare))
        text = _class_text(name, key, base, window, size) + " (rare in the baseline)"
        best = Finding("class_mix", name, "output", size, p, text=text)
    return best


def _confidence(name: str, base: list[int], window: list[int]) -> Finding:
    nb, nw = float(sum(base)), float(sum(window))
    value, p = _binned([float(c) for c in base], [float(c) for c in window], nb, nw)
    bins = len(base)

    def mean(h: list[int], n: float) -> float:
        return sum((i + 0.5) / bins * c for i, c in enumerate(h)) / n

    text = f"top-1 confidence of {name}: mean {mean(base, nb):.2f} → {mean(window, nw):.2f}, PSI {value:.2g}"
    return Finding("confidence", name, "output", value, p, text=text)


def _element(
    mb: float, sb: float, nb: int, mw: float, sw: float, nw: int, kurtosis: float = 3.0
) -> tuple[float, float, float]:
    """(divergence, p-value, shift in baseline std) of one element: normals' symmetric KL, mean and variance tests
    (the log variance ratio's spread is (kurtosis - 1) / n: 2 / n for normal rows, more for heavy-tailed ones)."""
    floor = 1e-9 * max(1.0, abs(mb))
    vb, vw = max(sb, floor) ** 2, max(sw, floor) ** 2
    d = mw - mb
    divergence = 0.5 * (vw / vb + vb / vw - 2) + 0.5 * d * d * (1 / vb + 1 / vw)
    p_mean = normal_sf2(d / math.sqrt(vb / nb + vw / nw)) if abs(d) > floor else 1.0
    spread = (kurtosis - 1.0) * (1.0 / max(nb - 1, 1) + 1.0 / max(nw - 1, 1))
    p_var = normal_sf2(math.log(vw / vb) / math.sqrt(spread))
    return min(divergence, MAX_DIVERGENCE), min(1.0, 2 * min(p_mean, p_var)), d / math.sqrt(vb)


def _elements(side: str, name: str, base: Part, window: Part, settings: DriftSettings) -> tuple[Finding, list]:
    """One finding per tensor (the element that moved most), and per element (divergence, p, shift, std ratio)."""
    per = []
    for i, (mb, sb, mw, sw) in enumerate(zip(base.mean, base.std, window.mean, window.std, strict=True)):
        divergence, p, shift = _element(mb, sb, base.rows, mw, sw, window.rows, settings.kurtosis)
        per.append((divergence, p, shift, (sw + EPS) / (sb + EPS), i))
    worst = max(per, key=lambda e: e[0])
    return Finding("elements", name, side, worst[0], min(e[1] for e in per), tests=len(per)), per


def _element_text(side: str, name: str, blocks: bool, per: list, flagged: list) -> str:
    divergence, _, shift, ratio, i = max(flagged, key=lambda e: e[0])
    where = f"{name} block {i}" if blocks else (name if len(per) == 1 else f"{name}[{i}]")
    what = f"mean {shift:+.1f} std" if abs(shift) >= 0.5 or 0.7 < ratio < 1.4 else f"std x{ratio:.2g}"
    several = f" ({len(flagged)}/{len(per)} {'blocks' if blocks else 'elements'} moved)" if len(per) > 1 else ""
    return f"{side} {where}: {what}{several}"


def _sketch(kind: str, name: str, base: Any, window: Any) -> Finding:
    """PSI over the baseline's deciles (window shares read from its sketch), chi-square sized."""
    nb, nw = sketch_weight(base), sketch_weight(window)
    edges = sorted({sketch_quantile(base, q) for q in DECILES})
    cb = [sketch_cdf(base, e) for e in edges] + [1.0]
    cw = [sketch_cdf(window, e) for e in edges] + [1.0]
    b = [(hi - lo) * nb for lo, hi in zip([0.0, *cb[:-1]], cb, strict=True)]
    w = [(hi - lo) * nw for lo, hi in zip([0.0, *cw[:-1]], cw, strict=True)]
    value, p = _binned(b, w, nb, nw) if len(b) > 1 else (0.0, 1.0)
    distance, p_ks = ks_sketches(base, window)
    label = "row mean" if kind == "level" else "row std"
    text = (
        f"input {name}: {label} median {sketch_quantile(base, 0.5):.3g} → {sketch_quantile(window, 0.5):.3g}, "
        f"PSI {value:.2g}, KS D {distance:.2f}"
    )
    return Finding(kind, name, "input", value, p, text=text, tests=2, ks=(distance, p_ks))


def _flag(finding: Finding, limit: float, settings: DriftSettings) -> None:
    """Which of the finding's tests fired: the binned chi-square (class mix, confidence; PSI for sketches) sized by
    PSI, and for sketches KS sized by its distance."""
    if finding.p_value < limit and finding.psi >= settings.psi_min:
        finding.fired.append("psi" if finding.ks is not None else "chi-square")
    if finding.ks is not None and finding.ks[1] < limit and finding.ks[0] >= settings.ks_min:
        finding.fired.append("ks")
    finding.flagged = bool(finding.fired)
    if finding.flagged and finding.ks is not None:
        finding.text += f" ({' and '.join(t.upper() for t in finding.fired)} fired)"


def drift_verdict(baseline: Summary, window: Summary, settings: DriftSettings = DEFAULT_SETTINGS) -> Verdict:
    """The window against the baseline: every statistic both hold `min_rows` rows of is tested; a finding flags
    when p < alpha / tests and PSI >= psi_min. Pure: no state, no I/O (rollout gates call it too)."""
    n = settings.min_rows
    findings: list[Finding] = []
    elements: list[tuple[Finding, list, bool]] = []
    for side, base_parts, window_parts in (
        ("output", baseline.outputs, window.outputs),
        ("input", baseline.inputs, window.inputs),
    ):
        for name, w in window_parts.items():
            b = base_parts.get(name)
            if b is None:
                continue
            mixed = bool(b.classes and w.classes and sum(b.classes.values()) >= n and sum(w.classes.values()) >= n)
            if mixed:
                findings += _class_mix(name, b.classes or {}, w.classes or {}, settings)
            if b.top1 and w.top1 and len(b.top1) == len(w.top1) and sum(b.top1) >= n and sum(w.top1) >= n:
                findings.append(_confidence(name, b.top1, w.top1))
            # a probability output (or a declared classifier's) is judged by its class mix and top-1 confidence:
            # each class's probability is near 0 on most rows and high on its own few, far heavier-tailed than the
            # per-element tests allow (their false alarms on calm windows: docs/drift.md); logits and outputs that
            # only look like class scores (a regression's [N, 4]) keep the per-element tests
            distribution = b.scores in DISTRIBUTIONS and w.scores in DISTRIBUTIONS
            same_shape = b.mean and len(b.mean) == len(w.mean) and b.blocks == w.blocks
            if not distribution and same_shape and min(b.rows, w.rows) >= n:
                finding, per = _elements(side, name, b, w, settings)
                elements.append((finding, per, b.blocks))
                findings.append(finding)
            for kind in ("level", "spread"):
                sb, sw = getattr(b, kind), getattr(w, kind)
                if sb and sw and sketch_weight(sb) >= n and sketch_weight(sw) >= n:
                    findings.append(_sketch(kind, name, sb, sw))
    verdict = Verdict(baseline_rows=baseline.count, window_rows=window.count)
    verdict.tests = sum(f.tests for f in findings)
    if not findings:
        verdict.reason = f"fewer than {n} rows of any statistic in the baseline ({baseline.count}) or the window"
        verdict.reason += f" ({window.count})"
        return verdict
    limit = settings.alpha / verdict.tests
    for finding in findings:
        _flag(finding, limit, settings)
    for finding, per, blocks in elements:
        moved = [e for e in per if e[1] < limit and e[0] >= settings.psi_min]
        finding.flagged, finding.fired = bool(moved), ["mean/variance"] if moved else []
        finding.text = _element_text(finding.side, finding.tensor, blocks, per, moved or per)
    findings.sort(key=lambda f: (not f.flagged, -f.psi))
    verdict.judged, verdict.findings = True, findings
    verdict.flagged = any(f.flagged for f in findings)
    verdict.score = max(f.psi for f in findings)
    return verdict
