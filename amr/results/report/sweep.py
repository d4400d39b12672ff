"""A sweep's results: systems (runs grouped over seeds), their intervals overall and per GT-length
bucket, paired comparisons against a reference system, and the pivot x stage grid."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats as sps

from amr.errors import InputError
from amr.metrics.retrieval import DEFAULT_BUCKET_EDGES, GT_LENGTH_RANGE, SHORT_NAMES, length_buckets
from amr.results.report import figures
from amr.results.report.runs import COLUMNS, FULL, Run, check_by, find_runs, group_systems, seed_matrix, stage_curves
from amr.results.report.stats import Estimate, Paired, interval, paired

HEADLINE = ("R1@0.5", "R1@0.7", "mAP")  # the metrics of figures and comparisons
PIVOTS_KEY = "augment.backtranslation.pivots"
STAGES_KEY = "augment.backtranslation.stages"


@dataclass
class System:
    """The runs (seeds) of one system."""

    name: str
    runs: list[Run]
    _est: dict[tuple[str, str], Estimate] = field(default_factory=dict, repr=False)

    @property
    def seeds(self) -> list[int]:
        return sorted(r.seed for r in self.runs)

    def matrix(self, metric: str, length_range: tuple[float, float] = GT_LENGTH_RANGE) -> np.ndarray:
        """(seeds, queries) per-query values on the queries every seed was scored on."""
        return seed_matrix(self.runs, metric, length_range)[1]

    def estimate(self, metric: str, bucket: str, length_range: tuple[float, float]) -> Estimate | None:
        """Mean and interval in points (None for an empty bucket)."""
        key = (metric, bucket)
        if key not in self._est:
            m = self.matrix(metric, length_range)
            self._est[key] = interval(m) if m.shape[1] else Estimate(np.nan, np.nan, np.nan)
        est = self._est[key]
        return None if np.isnan(est.mean) else est

    def seed_std(self, metric: str) -> float | None:
        """Standard deviation over seeds of the official (rounded) figure; None for one seed."""
        key = next(k for k, short in SHORT_NAMES.items() if short == metric)
        vals = [r.metrics["brief"][key] for r in self.runs]
        return float(np.std(vals, ddof=1)) if len(vals) > 1 else None


def _setting_label(value: Any) -> str:
    if isinstance(value, list | tuple):
        return "+".join(map(str, value)) or "none"
    return "none" if value in (None, "") else str(value)


class Sweep:
    """Every finished run below some folders, grouped into systems."""

    def __init__(
        self,
        roots: Sequence[str | Path],
        by: Sequence[str] | None = None,
        bucket_edges: Sequence[float] = DEFAULT_BUCKET_EDGES,
        metrics: Sequence[str] = HEADLINE,
    ) -> None:
        if not metrics:
            raise InputError("no metric chosen", "--metrics")
        for m in metrics:
            if m not in COLUMNS:
                raise InputError(f"unknown metric '{m}' (one of {', '.join(COLUMNS)})", "--metrics")
        self.metrics = list(metrics)  # those of the figures, curves and comparisons
        self.runs = find_runs(roots)
        check_by(self.runs, by)
        self.systems = [System(name, members) for name, members in group_systems(self.runs, by).items()]
        self.ranges: dict[str, tuple[float, float]] = {FULL: GT_LENGTH_RANGE, **length_buckets(bucket_edges)}

    @property
    def buckets(self) -> list[str]:
        return [b for b in self.ranges if b != FULL]

    def system(self, name: str | None) -> System:
        """A system by name; without a name the one called ``baseline`` (else the first)."""
        if name is None:
            return next((s for s in self.systems if s.name.split(" [")[0] == "baseline"), self.systems[0])
        for s in self.systems:
            if s.name == name:
                return s
        raise InputError(f"no system '{name}' (systems: {'; '.join(s.name for s in self.systems)})", "--reference")

    def estimate(self, system: System, metric: str, bucket: str = FULL) -> Estimate | None:
        return system.estimate(metric, bucket, self.ranges[bucket])

    @cached_property
    def bucket_sizes(self) -> dict[str, int]:
        """Test queries with at least one GT window in each bucket."""
        run = self.runs[0]
        return {b: len(run.scores(rng).qids) for b, rng in self.ranges.items()}

    @property
    def focus(self) -> str:
        """The metric of the per-length chart and the grid: R1@0.7 when chosen, else the first."""
        return "R1@0.7" if "R1@0.7" in self.metrics else self.metrics[0]

    def comparisons(self, reference: System) -> list[tuple[str, str, Paired]]:
        """(system, metric, B - reference) for every other system, on their common queries."""
        return compare_systems(reference, [s for s in self.systems if s is not reference], self.metrics)

    def grid(
        self, metric: str = "R1@0.7"
    ) -> tuple[dict[tuple[str, str], tuple[Estimate, int]], list[str], list[str]] | None:
        """The pivot x back-translation-stage grid when the sweep varies those settings (at least two
        back-translated settings, read from each run's saved config), cells pooling the runs that
        share a pivot and stage; else None."""
        cells: dict[tuple[str, str], list[Run]] = {}
        for r in self.runs:
            pivots, stages = r.setting(PIVOTS_KEY), r.setting(STAGES_KEY)
            if pivots is None or stages is None:
                return None
            key = (_setting_label(pivots) if stages else "none", _setting_label(stages))
            cells.setdefault(key, []).append(r)
        if len([k for k in cells if k != ("none", "none")]) < 2:  # one augmented setting is no grid
            return None
        rows = sorted({k[0] for k in cells}, key=lambda v: (v == "none", v))
        cols = sorted({k[1] for k in cells}, key=lambda v: (v == "none", -len(v), v))
        return {k: (interval(seed_matrix(v, metric)[1]), len(v)) for k, v in cells.items()}, rows, cols

    def curves(self) -> list[figures.Curve]:
        """Every run's validation curves of the chosen metrics, per stage; a pre-training stage that
        several runs share (one cache entry) once, under the first system that uses it."""
        out, seen = [], set()
        for s in self.systems:
            for r in s.runs:
                for stage, (values, best) in stage_curves(r, self.metrics).items():
                    shared = (stage, r.pretrain_dir) if stage == "pretrain" else None
                    if shared not in seen:
                        out.append(figures.Curve(s.name, r.seed, stage, values, best))
                    if shared is not None:
                        seen.add(shared)
        return out


def compare_systems(
    reference: System, others: Sequence[System], metrics: Sequence[str] = HEADLINE
) -> list[tuple[str, str, Paired]]:
    """(system, metric, B - reference) for each of ``others``, on the queries both were scored on."""
    out = []
    ref = {metric: seed_matrix(reference.runs, metric) for metric in metrics}  # once, not per system
    for s in others:
        for metric in metrics:
            qa, ma = ref[metric]
            qb, mb = seed_matrix(s.runs, metric)
            common = sorted(set(qa) & set(qb))
            ia, ib = [qa.index(q) for q in common], [qb.index(q) for q in common]
            out.append((s.name, metric, paired(ma[:, ia], mb[:, ib])))
    return out


def query_differences(a: System, b: System, metric: str = "mAP") -> list[tuple[str, float]]:
    """Per-query B - A of the seed-averaged ``metric`` (points) on their common queries, most negative first."""
    qa, ma = seed_matrix(a.runs, metric)
    qb, mb = seed_matrix(b.runs, metric)
    where_a, where_b = {q: i for i, q in enumerate(qa)}, {q: i for i, q in enumerate(qb)}
    common = [q for q in qa if q in where_b]
    diffs = [(q, 100 * float(mb[:, where_b[q]].mean() - ma[:, where_a[q]].mean())) for q in common]
    return sorted(diffs, key=lambda x: x[1])


def p_adjusted(p_values: Sequence[float]) -> list[float]:
    """Benjamini-Hochberg adjusted p-values over a family of comparisons."""
    return [float(x) for x in sps.false_discovery_control(np.asarray(p_values))] if p_values else []


def system_label(s: System) -> str:
    return f"{s.name} (n={len(s.runs)})"


def bucket_label(sweep: Sweep, bucket: str) -> str:
    lo, hi = sweep.ranges[bucket]
    return f"{bucket}: ({lo:g}, {hi:g}] s, {sweep.bucket_sizes[bucket]} queries"


def headline_figure(sweep: Sweep) -> Any:
    panels = [figures.Panel(f"{m} (%)", [sweep.estimate(s, m) for s in sweep.systems]) for m in sweep.metrics]
    title = "test split: mean over seeds and queries, 95 % interval (seeds and queries resampled)"
    return figures.bar_figure([system_label(s) for s in sweep.systems], panels, title)


def bucket_figure(sweep: Sweep, metric: str | None = None) -> Any:
    metric = metric or sweep.focus
    panels = []
    for b in sweep.buckets:
        lo, hi = sweep.ranges[b]
        values = [sweep.estimate(s, metric, b) for s in sweep.systems]
        panels.append(figures.Panel(f"{metric} (%)", values, f"GT ({lo:g}, {hi:g}] s: {sweep.bucket_sizes[b]} queries"))
    title = f"test {metric} by GT window length; 95 % intervals"
    return figures.bar_figure([system_label(s) for s in sweep.systems], panels, title)


def grid_figure(sweep: Sweep, metric: str | None = None) -> Any | None:
    metric = metric or sweep.focus
    grid = sweep.grid(metric)
    if grid is None:
        return None
    cells, rows, cols = grid
    return figures.grid_figure(cells, rows, cols, f"test {metric} (%)", f"{metric} by pivot and stage (runs pooled)")


def estimates_table(sweep: Sweep) -> list[dict[str, Any]]:
    """One row per system: seeds, and per metric the mean, seed std and interval (overall)."""
    rows = []
    for s in sweep.systems:
        row: dict[str, Any] = {"system": s.name, "n": len(s.runs), "seeds": s.seeds}
        for m in COLUMNS:
            est = sweep.estimate(s, m)
            row[m] = {
                "mean": est.mean if est else None,
                "std": s.seed_std(m),
                "ci": [est.low, est.high] if est else None,
            }
        rows.append(row)
    return rows


def mapping_rows(sweep: Sweep, metric: str) -> list[dict[str, Any]]:
    """Per-length rows: system, then per bucket the mean and interval of ``metric``."""
    out = []
    for s in sweep.systems:
        row: dict[str, Any] = {"system": s.name}
        for b in sweep.buckets:
            est = sweep.estimate(s, metric, b)
            row[b] = None if est is None else {"mean": est.mean, "ci": [est.low, est.high]}
        out.append(row)
    return out
