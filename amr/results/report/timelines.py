"""Timelines of test queries: the recording, its GT windows and predicted windows with their scores."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from amr.data.annotations import Query
from amr.results.report.figures import Timeline, save, timeline_figure


def query_timeline(query: Query, systems: Mapping[str, dict[str, Any]], top: int = 3) -> Timeline:
    """One query's panel: the ``top`` windows of each system's prediction line (label prefix: the system)."""
    rows = []
    for name, line in systems.items():
        for k, (st, ed, score) in enumerate(list(line["pred_relevant_windows"])[:top]):
            rows.append((f"{name} #{k + 1} ({score:.2f})".strip(), float(st), float(ed)))
    return Timeline(f"{query.qid}: {query.query}", query.duration, query.windows or [], rows)


def write_timelines(
    path: Path,
    predictions: Sequence[dict[str, Any]],
    queries: Sequence[Query],
    loggers: Sequence[Any] = (),
    n: int = 4,
    top: int = 3,
) -> None:
    """A run's test timeline: the first ``n`` predicted queries, ``top`` windows each."""
    by_qid = {q.qid: q for q in queries}
    chosen = [p for p in predictions if p["qid"] in by_qid][:n]
    if not chosen:
        return
    save(timeline_figure([query_timeline(by_qid[p["qid"]], {"": p}, top) for p in chosen]), path)
    for lg in loggers:
        if hasattr(lg, "log_image"):
            lg.log_image(key="test/timeline", images=[str(path)])
