"""The Compare tab: finished runs read as ``amr report`` reads them (:func:`find_runs`,
:func:`group_systems`), one run per system (its first seed), the test queries, and for one query
each system's top windows against the ground truth."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from amr.data.annotations import Query, load_annotations
from amr.errors import InputError
from amr.metrics.iou import window_iou
from amr.metrics.retrieval import DEFAULT_BUCKET_EDGES, length_buckets
from amr.results.report.figures import timeline_figure
from amr.results.report.runs import Run, find_runs, group_systems
from amr.results.report.timelines import query_timeline

COLUMNS = ["system", "rank", "start", "end", "score", "IoU"]


def best_iou(window: Sequence[float], gt: Sequence[Sequence[float]]) -> float:
    """The window's IoU with its best-matching GT window (0 without GT)."""
    if not gt:
        return 0.0
    return float(window_iou(np.asarray([window[:2]]), np.asarray(gt)).max())


def buckets_of(query: Query, edges: Sequence[float] = DEFAULT_BUCKET_EDGES) -> list[str]:
    """The GT-length buckets (``0-3s``, ..., as the report's per-length tables) of the query's windows."""
    names = []
    for name, (lo, hi) in length_buckets(edges).items():
        if any(lo < ed - st <= hi for st, ed in query.windows or []) and name not in names:
            names.append(name)
    return names


@dataclass
class Comparison:
    """``systems``: system name -> the run shown for it; ``queries``: the test queries by qid."""

    systems: dict[str, Run]
    queries: dict[str, Query]

    @classmethod
    def load(cls, roots: Sequence[str | Path]) -> Comparison:
        """The finished runs below ``roots``; a run folder without test predictions is one line."""
        runs = find_runs(roots)
        if not runs:
            raise InputError("no finished run below it", roots[0] if roots else ".")
        systems = {name: min(rs, key=lambda r: r.seed) for name, rs in group_systems(runs).items()}
        queries = {q.qid: q for q in load_annotations(runs[0].gt_path)}
        return cls(systems, queries)

    def line(self, system: str, qid: str) -> dict[str, Any] | None:
        return self.systems[system].predictions.get(qid)

    def top1_iou(self, system: str, qid: str) -> float:
        """IoU of the system's best window with the GT (NaN when it has no line for the query)."""
        line = self.line(system, qid)
        if not line or not line["pred_relevant_windows"]:
            return math.nan
        return best_iou(line["pred_relevant_windows"][0], self.queries[qid].windows or [])

    def choices(self, search: str = "", a: str | None = None, b: str | None = None) -> list[tuple[str, str]]:
        """(label, qid) of the queries whose text or qid holds ``search``; with two systems, sorted
        by the difference of their top-1 IoU, largest first."""
        words = search.strip().lower()
        qids = [q for q, x in self.queries.items() if not words or words in x.query.lower() or words in q.lower()]
        if a in self.systems and b in self.systems and a != b:
            diff = {q: abs(self.top1_iou(a, q) - self.top1_iou(b, q)) for q in qids}
            qids.sort(key=lambda q: -diff[q] if not math.isnan(diff[q]) else math.inf)
            return [(f"{q}: {self.queries[q].query} (IoU difference {diff[q]:.2f})", q) for q in qids]
        return [(f"{q}: {self.queries[q].query}", q) for q in qids]

    def view(self, qid: str, top: int = 3) -> tuple[Any, list[list[Any]], str]:
        """One query: the timeline (GT and each system's ``top`` windows), the table of those
        windows with score and IoU, and a line naming the query and its length buckets."""
        if qid not in self.queries:
            raise InputError("not a test query of these runs", qid)
        query = self.queries[qid]
        lines = {name: line for name in self.systems if (line := self.line(name, qid)) is not None}
        rows = [
            [name, k + 1, float(w[0]), float(w[1]), round(float(w[2]), 4), round(best_iou(w, query.windows or []), 4)]
            for name, line in lines.items()
            for k, w in enumerate(line["pred_relevant_windows"][:top])
        ]
        gt = ", ".join(f"[{st:g}, {ed:g}]" for st, ed in query.windows or [])
        buckets = ", ".join(buckets_of(query)) or "none"
        about = f"**{qid}**: {query.query} · recording {query.vid} ({query.duration:g} s) · GT {gt} · length {buckets}"
        return timeline_figure([query_timeline(query, lines, top)]), rows, about
