"""Ensembles of runs: the prediction files of several runs (seeds or systems, same queries) fused
into one, by 1-D weighted box fusion or by plain score averaging (``amr ensemble``).

Weighted box fusion (Solovyev et al., 2021) in one dimension, per query:

* every run's windows, with score x the run's weight, are visited in descending weighted score
  (ties in run order);
* a window joins the cluster whose fused window overlaps it most, with IoU >= ``iou``, among the
  clusters holding no window of its own run yet; otherwise it starts a cluster;
* a cluster's fused window is the score-weighted mean of its starts and ends, its score the sum of
  its weighted scores over the sum of all runs' weights (a window found by every run keeps its
  score; one found by a single run of N equal ones gets 1/N of it);
* the fused windows are ranked by score and the first ``top`` kept.

One window per run per cluster is what makes the fusion of identical runs the run itself.
Score averaging pools identical windows only: each distinct ``[st, ed]`` scores the sum of the
runs' weighted scores for it over the sum of the weights.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from amr.errors import InputError
from amr.metrics.iou import pair_iou
from amr.metrics.predictions import evaluate_lines, load_predictions
from amr.metrics.retrieval import DEFAULT_BUCKET_EDGES, MAX_PREDICTIONS, length_buckets
from amr.results.run_folder import ENSEMBLE_RECORD, RunFolder, derived_overrides, write_derived_run

METHODS = ("wbf", "average")


class _Cluster:
    """Windows fused so far: running sums, so that adding one and reading the fused window are O(1)."""

    __slots__ = ("runs", "n", "score", "raw", "sums", "lo", "hi", "fused")

    def __init__(self) -> None:
        self.runs: set[int] = set()
        self.n = 0
        self.score = 0.0  # sum of weighted scores
        self.raw: set[float] = set()  # the members' own scores
        self.sums = [0.0, 0.0, 0.0, 0.0]  # score-weighted start, end; plain start, end
        self.lo = [np.inf, np.inf]  # smallest and largest start, end
        self.hi = [-np.inf, -np.inf]
        self.fused = (0.0, 0.0)

    def add(self, run: int, score: float, st: float, ed: float, raw: float) -> None:
        self.runs.add(run)
        self.raw.add(raw)
        self.n += 1
        self.score += score
        for i, x in enumerate((st, ed)):
            self.sums[i] += score * x
            self.sums[2 + i] += x
            self.lo[i], self.hi[i] = min(self.lo[i], x), max(self.hi[i], x)
        # score-weighted mean (plain mean when every score is 0); exact when the members agree,
        # so that identical runs fuse to themselves bit for bit
        st_ed = []
        for i in (0, 1):
            if self.lo[i] == self.hi[i]:
                st_ed.append(self.lo[i])
            else:
                st_ed.append(self.sums[i] / self.score if self.score > 0 else self.sums[2 + i] / self.n)
        self.fused = (st_ed[0], st_ed[1])

    def fused_score(self, n_runs: int, total_weight: float) -> float:
        """Sum of weighted scores over all runs' weight; a window every run scored alike keeps that
        score exactly."""
        if len(self.runs) == n_runs and len(self.raw) == 1:
            return next(iter(self.raw))
        return self.score / total_weight


def wbf(
    rows: Sequence[np.ndarray], weights: Sequence[float], iou: float = 0.55, top: int = MAX_PREDICTIONS
) -> np.ndarray:
    """Fuse one query's windows. rows[k]: (n_k, 3) ``[st, ed, score]`` of run k -> (<= top, 3)."""
    boxes = []
    for k, (run, w) in enumerate(zip(rows, weights, strict=True)):
        boxes += [(sc * w, k, st, ed, sc) for st, ed, sc in np.asarray(run, dtype=float).reshape(-1, 3).tolist()]
    boxes.sort(key=lambda b: -b[0])  # stable: ties keep run order
    clusters: list[_Cluster] = []
    for score, k, st, ed, raw in boxes:
        best, best_iou = None, iou
        for c in clusters:  # the most overlapping cluster without a window of this run; of equals, the last
            if k not in c.runs and (o := pair_iou((st, ed), c.fused)) >= best_iou:
                best, best_iou = c, o
        if best is None:
            best = _Cluster()
            clusters.append(best)
        best.add(k, score, st, ed, raw)
    total = float(sum(weights))
    fused = [(*c.fused, c.fused_score(len(rows), total)) for c in clusters]
    fused.sort(key=lambda r: -r[2])
    return np.asarray(fused[:top], dtype=float).reshape(-1, 3)


def average(rows: Sequence[np.ndarray], weights: Sequence[float], top: int = MAX_PREDICTIONS) -> np.ndarray:
    """Pool identical windows: each distinct ``[st, ed]`` scores its runs' weighted scores / total
    weight (a window every run scored alike keeps that score exactly)."""
    pooled: dict[tuple[float, float], list[tuple[int, float, float]]] = {}
    for k, (run, w) in enumerate(zip(rows, weights, strict=True)):
        for st, ed, score in np.asarray(run, dtype=float).reshape(-1, 3).tolist():
            pooled.setdefault((float(st), float(ed)), []).append((k, w, float(score)))
    total = float(sum(weights))
    fused = []
    for (st, ed), got in pooled.items():
        scores = {sc for _, _, sc in got}
        every_run = len({k for k, _, _ in got}) == len(rows) == len(got)
        fused.append(
            (st, ed, scores.pop() if every_run and len(scores) == 1 else sum(w * sc for _, w, sc in got) / total)
        )
    fused.sort(key=lambda r: -r[2])
    return np.asarray(fused[:top], dtype=float).reshape(-1, 3)


def fuse(
    runs: Sequence[Mapping[str, dict[str, Any]]], weights: Sequence[float], method: str = "wbf", iou: float = 0.55
) -> list[dict[str, Any]]:
    """Fuse prediction files (qid -> line, as ``load_predictions`` reads them) query by query, in
    the first run's order."""
    lines = []
    for qid, line in runs[0].items():
        rows = [r[qid]["pred_relevant_windows"] for r in runs]
        fused = wbf(rows, weights, iou) if method == "wbf" else average(rows, weights)
        lines.append(dict(line, pred_relevant_windows=fused))
    return lines


def _check_members(runs: Sequence[Path], weights: Sequence[float] | None, method: str, iou: float) -> list[float]:
    if method not in METHODS:
        raise InputError(f"unknown method '{method}' (one of {', '.join(METHODS)})", "--method")
    if len(runs) < 2:
        raise InputError("an ensemble needs at least two runs")
    if not 0 < iou <= 1:
        raise InputError(f"--iou must be in (0, 1], got {iou}", "--iou")
    w = list(weights) if weights else [1.0] * len(runs)
    if len(w) != len(runs) or any(not (x > 0 and math.isfinite(x)) for x in w):
        raise InputError(f"--weights needs one positive finite weight per run ({len(runs)}), got {w}", "--weights")
    first = RunFolder(runs[0])
    for run in runs:
        folder = RunFolder(run)
        if not folder.predictions("test").is_file():
            raise InputError(f"no {folder.rel(folder.predictions('test'))} in this run", run)
        for split in ("val", "test"):
            mine, theirs = folder.annotations(split), first.annotations(split)
            if mine is not None and theirs is not None and mine.resolve() != theirs.resolve():
                raise InputError(f"its {split} predictions are for {mine}, {runs[0]}'s for {theirs}: not one set", run)
    return w


def ensemble(
    runs: Sequence[Path],
    out: Path,
    method: str = "wbf",
    weights: Sequence[float] | None = None,
    iou: float = 0.55,
) -> dict[str, dict[str, Any]]:
    """Fuse the runs' validation (when all have one) and test predictions into ``out``:
    ``<split>_preds.jsonl``, ``<split>_metrics.json`` (official, and per GT length bucket) and
    ``ensemble.json``. Returns the metrics per split."""
    w = _check_members(runs, weights, method, iou)
    folders = [RunFolder(r) for r in runs]
    infos = [f.info() for f in folders]
    results: dict[str, dict[str, Any]] = {}
    lines: dict[str, list[dict[str, Any]]] = {}
    annotations: dict[str, str] = {}
    for split in ("val", "test"):
        files = [f.predictions(split) for f in folders]
        if not all(p.is_file() for p in files):
            continue
        loaded = [load_predictions(p) for p in files]
        for p, preds in zip(files[1:], loaded[1:], strict=True):
            if set(preds) != set(loaded[0]):
                raise InputError(f"predicts other {split} queries than {files[0]}", p)
        lines[split] = fuse(loaded, w, method, iou)
        gt = folders[0].annotations(split)
        if gt is not None and gt.is_file():
            annotations[split] = str(gt)
            results[split] = evaluate_lines(lines[split], gt, buckets=length_buckets(DEFAULT_BUCKET_EDGES))
    info = {
        "experiment": infos[0].get("experiment", "ensemble"),
        "overrides": derived_overrides(infos, [f"ensemble={method}"]),
        "seed": 0,
        "annotations": annotations,
        "derived_from": [str(r) for r in runs],
    }
    record = {"method": method, "iou": iou, "runs": [str(r) for r in runs], "weights": w}
    write_derived_run(out, info, lines, results, (ENSEMBLE_RECORD, record))
    return results
