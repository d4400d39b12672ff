"""Prediction files (internal, with scores) and the DCASE submission file (scores dropped).

Internal prediction line: ``{"qid", "query", "vid", "pred_relevant_windows": [[st, ed, score], ...]}``.
Submission line: the same with ``[[st, ed], ...]``, at most 10 windows in descending confidence.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from amr.data.annotations import load_annotations
from amr.errors import InputError
from amr.io import finite_number, read_jsonl, write_json, write_jsonl
from amr.metrics.retrieval import MAX_PREDICTIONS, evaluate


def load_predictions(
    path: str | Path, gt_qids: set[str] | None = None, allow_reversed: bool = False
) -> dict[str, dict[str, Any]]:
    """Read an internal prediction file, validating every line.

    ``allow_reversed`` accepts windows that end before they start and scores them as the official
    evaluator does (an empty intersection); by default they are an error.

    Returns:
        qid -> the line's object, with ``pred_relevant_windows`` as an (n, 3) float array.

    Raises:
        InputError: naming the line: missing field, non-numeric or reversed window, missing score,
            duplicated qid, or (when ``gt_qids`` is given) a qid not in the ground truth.
    """
    out: dict[str, dict[str, Any]] = {}
    lines: dict[str, int] = {}
    for line, obj in read_jsonl(path):
        for key in ("qid", "pred_relevant_windows"):
            if key not in obj:
                raise InputError(f"missing field '{key}'", path, line)
        qid = str(obj["qid"])
        rows = obj["pred_relevant_windows"]
        if not isinstance(rows, list) or not rows:
            raise InputError(f"qid {qid}: pred_relevant_windows must be a non-empty list", path, line)
        for w in rows:
            if not isinstance(w, list) or len(w) < 3:
                raise InputError(f"qid {qid}: window {w!r} is not [start, end, score]", path, line)
            if not all(finite_number(v) for v in w[:3]):
                raise InputError(f"qid {qid}: window {w!r} has a non-numeric value", path, line)
            if w[1] < w[0] and not allow_reversed:
                raise InputError(f"qid {qid}: window {w!r} ends before it starts", path, line)
        if qid in lines:
            raise InputError(f"qid {qid} duplicated (first on line {lines[qid]})", path, line)
        if gt_qids is not None and qid not in gt_qids:
            raise InputError(f"qid {qid} is not in the ground truth", path, line)
        lines[qid] = line
        out[qid] = dict(obj, qid=qid, pred_relevant_windows=np.asarray([w[:3] for w in rows], dtype=float))
    if not out:
        raise InputError("no predictions", path)
    return out


def evaluate_files(
    pred_path: str | Path,
    gt_path: str | Path,
    allow_partial: bool = False,
    allow_reversed: bool = False,
    buckets: Mapping[str, tuple[float, float]] | None = None,
) -> dict[str, Any]:
    """Score a prediction file against an annotation file with the official metrics (and per
    GT-length bucket when ``buckets`` are given).

    Qid sets must match unless ``allow_partial``; then only shared qids are scored (as the official
    ``match_number=False``).
    """
    gt = load_annotations(gt_path, require_windows=True)
    gt_windows = {q.qid: np.asarray(q.windows, dtype=float) for q in gt}
    preds = load_predictions(pred_path, gt_qids=set(gt_windows), allow_reversed=allow_reversed)
    if not allow_partial and len(preds) != len(gt_windows):
        missing = [q for q in gt_windows if q not in preds]
        raise InputError(
            f"{len(missing)} GT queries have no prediction (first: {', '.join(missing[:5])}); "
            "pass --allow-partial to score only the predicted ones",
            pred_path,
        )
    pred_rows = {qid: p["pred_relevant_windows"] for qid, p in preds.items()}
    return evaluate(pred_rows, {q: gt_windows[q] for q in pred_rows}, buckets)


def evaluate_lines(
    lines: Iterable[Mapping[str, Any]], gt_path: str | Path, buckets: Mapping[str, tuple[float, float]] | None = None
) -> dict[str, Any]:
    """Score prediction lines in memory (one per query of ``gt_path``) like :func:`evaluate_files`."""
    gt = {q.qid: np.asarray(q.windows, dtype=float) for q in load_annotations(gt_path, require_windows=True)}
    preds = {str(ln["qid"]): np.asarray(ln["pred_relevant_windows"], dtype=float).reshape(-1, 3) for ln in lines}
    if set(preds) != set(gt):
        raise InputError(f"{len(set(gt) ^ set(preds))} queries differ between the predictions and", gt_path)
    return evaluate(preds, {q: gt[q] for q in preds}, buckets)


def submission_rows(predictions: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """DCASE submission lines: windows sorted by descending score (stable), at most 10, scores dropped."""
    out = []
    for p in predictions:
        rows = np.asarray(p["pred_relevant_windows"], dtype=float).reshape(-1, 3)
        rows = rows[np.argsort(-rows[:, 2], kind="stable")][:MAX_PREDICTIONS]
        out.append(
            {
                "qid": p["qid"],
                "query": p.get("query", ""),
                "vid": p.get("vid", ""),
                "pred_relevant_windows": [[float(st), float(ed)] for st, ed, _ in rows],
            }
        )
    return out


def write_predictions(path: str | Path, predictions: Iterable[dict[str, Any]]) -> None:
    rows = []
    for p in predictions:
        w = p["pred_relevant_windows"]
        rows.append(dict(p, pred_relevant_windows=np.asarray(w).tolist() if isinstance(w, np.ndarray) else w))
    write_jsonl(path, rows)


def write_submission(path: str | Path, predictions: Iterable[dict[str, Any]]) -> None:
    write_jsonl(path, submission_rows(predictions))


def write_metrics(path: str | Path, metrics: dict[str, Any]) -> None:
    write_json(path, metrics, indent=4)
