"""Official annotation JSONL: one query per line, parsed into typed, validated records.

Line format (all times in seconds; ``qid`` is a string)::

    {"qid": "...", "query": "...", "vid": "...", "duration": 190,
     "relevant_windows": [[st, ed], ...]}            # Clotho-Moment adds "fg_dB"

Evaluation files carry no ``relevant_windows``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from amr.errors import InputError
from amr.io import file_name, finite_number, read_jsonl

log = logging.getLogger(__name__)

# Windows may end a little after ``duration`` in the real data (1-2 s); that is accepted silently.
END_TOLERANCE_S = 2.0
OverlongPolicy = Literal["keep", "clip", "error"]


@dataclass
class Query:
    """One annotated query. ``windows`` is None for evaluation files (no labels)."""

    qid: str
    query: str
    vid: str
    duration: float
    windows: list[list[float]] | None
    line: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class AnnotationReport:
    """What loading noticed without failing."""

    n_overlong: int = 0  # windows ending more than 2 s after the duration (kept or clipped by policy)


def parse_query(
    obj: dict[str, Any],
    path: Path | str,
    line: int,
    require_windows: bool,
    overlong: OverlongPolicy,
    report: AnnotationReport,
) -> Query:
    for key in ("qid", "query", "vid", "duration"):
        if key not in obj:
            raise InputError(f"missing field '{key}'", path, line)
    qid = obj["qid"]
    if isinstance(qid, bool) or not isinstance(qid, (str, int)):
        raise InputError(f"qid must be a string, got {qid!r}", path, line)
    qid = file_name(str(qid), "qid", path, line)
    text = obj["query"]
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"empty query for qid {qid}", path, line)
    vid = obj["vid"]
    if not isinstance(vid, str) or not vid:
        raise InputError(f"vid must be a non-empty string for qid {qid}", path, line)
    file_name(vid, f"qid {qid}: vid", path, line)
    duration = obj["duration"]
    if not finite_number(duration) or duration <= 0:
        raise InputError(f"duration must be a positive number for qid {qid}, got {duration!r}", path, line)

    windows: list[list[float]] | None = None
    if "relevant_windows" in obj:
        raw = obj["relevant_windows"]
        if not isinstance(raw, list) or not raw:
            raise InputError(f"relevant_windows must be a non-empty list for qid {qid}", path, line)
        windows = []
        for w in raw:
            if not (isinstance(w, list) and len(w) == 2 and finite_number(w[0]) and finite_number(w[1])):
                raise InputError(f"window {w!r} of qid {qid} is not [start, end]", path, line)
            st, ed = w
            if ed < st:
                raise InputError(f"window {w!r} of qid {qid} ends before it starts", path, line)
            if st < 0 or st > duration + END_TOLERANCE_S:
                raise InputError(f"window {w!r} of qid {qid} lies outside [0, {duration} + 2]", path, line)
            if ed > duration + END_TOLERANCE_S:
                report.n_overlong += 1
                if overlong == "error":
                    raise InputError(f"window {w!r} of qid {qid} ends after duration {duration} + 2", path, line)
                if overlong == "clip":
                    ed = duration
            windows.append([st, ed])
    elif require_windows:
        raise InputError(f"missing field 'relevant_windows' for qid {qid}", path, line)
    extra = {k: v for k, v in obj.items() if k not in ("qid", "query", "vid", "duration", "relevant_windows")}
    return Query(qid=qid, query=text, vid=vid, duration=duration, windows=windows, line=line, extra=extra)


def load_annotations(path: str | Path, require_windows: bool = True, overlong: OverlongPolicy = "keep") -> list[Query]:
    """Parse and validate an official annotation file.

    Args:
        path: JSONL file.
        require_windows: every line must carry ``relevant_windows`` (train/val/test splits).
        overlong: what to do with a window ending more than 2 s after ``duration`` (CASTELLA train has
            one, ``[299, 4800]``): ``keep`` it as the official code does, ``clip`` it to ``duration``,
            or raise.

    Raises:
        InputError: malformed line, missing field, duplicated qid, bad window, empty query.
    """
    report = AnnotationReport()
    queries: list[Query] = []
    seen: dict[str, int] = {}
    for line, obj in read_jsonl(path):
        q = parse_query(obj, path, line, require_windows, overlong, report)
        if q.qid in seen:
            raise InputError(f"qid {q.qid} duplicated (first on line {seen[q.qid]})", path, line)
        seen[q.qid] = line
        queries.append(q)
    if not queries:
        raise InputError("no queries", path)
    if report.n_overlong:
        action = {"keep": "kept as in the official data", "clip": "clipped to duration"}.get(overlong, "")
        log.warning("%s: %d window(s) end more than 2 s after the duration (%s)", path, report.n_overlong, action)
    return queries


def split_stats(queries: Sequence[Query]) -> dict[str, float]:
    """Counts and lengths for a quick look at a split."""
    n_win = [len(q.windows or []) for q in queries]
    lengths = [w[1] - w[0] for q in queries for w in (q.windows or [])]
    return {
        "queries": len(queries),
        "recordings": len({q.vid for q in queries}),
        "windows": sum(n_win),
        "max_windows_per_query": max(n_win) if n_win else 0,
        "mean_duration_s": sum(q.duration for q in queries) / max(1, len(queries)),
        "mean_window_s": sum(lengths) / max(1, len(lengths)),
    }
