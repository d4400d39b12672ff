"""Finished runs on disk and their per-query scores: what every table, test and figure is built from.

A run is a folder with ``run.json`` and ``test_metrics.json`` (what ``amr-train`` writes); its
``predictions/test_preds.jsonl`` scored against its test annotations gives per-query vectors whose
``100 x mean`` are the official metrics, overall and per GT-length bucket.
"""

from __future__ import annotations

import csv
import hashlib
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from amr.data.annotations import load_annotations
from amr.errors import InputError
from amr.metrics.predictions import load_predictions
from amr.metrics.retrieval import GT_LENGTH_RANGE, MONITOR, SHORT_NAMES, THRESHOLDS, per_query_scores
from amr.results.run_folder import RUN_INFO, TEST_METRICS, RunFolder, csv_attempts, finished_runs, stage_logs
from amr.results.systems import changes_results

COLUMNS = tuple(SHORT_NAMES.values())  # metrics of the tables, in the official brief order
FULL = "full"  # the official length range's name


def metric_vectors(ap: np.ndarray, r1_iou: np.ndarray) -> dict[str, np.ndarray]:
    """Per-query contributions whose mean x 100 is each reported metric. ap: (Q, T), r1_iou: (Q,)."""
    t = list(THRESHOLDS)
    return {
        "R1@0.5": (r1_iou >= 0.5).astype(float),
        "R1@0.7": (r1_iou >= 0.7).astype(float),
        "mAP": ap.mean(1),
        "mAP@0.5": ap[:, t.index(0.5)],
        "mAP@0.75": ap[:, t.index(0.75)],
    }


@dataclass
class Scores:
    """Per-query vectors of one run on one GT-length range: ``vectors[metric]`` is (Q,) over ``qids``."""

    qids: list[str]
    vectors: dict[str, np.ndarray]


@cache
def _ground_truth(path: Path) -> dict[str, np.ndarray]:
    return {q.qid: np.asarray(q.windows, dtype=float) for q in load_annotations(path, require_windows=True)}


@cache
def data_digest(path: Path) -> str:
    """The identity of an annotation file: runs are comparable when theirs are equal."""
    return hashlib.sha1(path.read_bytes()).hexdigest()


@dataclass
class Run:
    path: Path
    experiment: str
    overrides: list[str]
    seed: int
    metrics: dict[str, Any]
    gt_path: Path
    config: dict[str, Any] = field(default_factory=dict)  # the run's resolved Hydra config (when kept)
    pretrain_dir: Path | None = None  # the pre-training stage's folder (in the shared cache)
    predictions: dict[str, dict[str, Any]] = field(default_factory=dict)
    _scores: dict[tuple[float, float], Scores] = field(default_factory=dict, repr=False)

    def system(
        self, by: Sequence[str] | None, common: frozenset[str] = frozenset(), short: Mapping[str, str] | None = None
    ) -> str:
        """The system's name: its experiment and the overrides that set it apart (not the seed, not
        those every compared run shares), or the values of the ``by`` keys. ``short`` renames keys
        (``augment.backtranslation.pivots`` -> ``pivots``)."""
        kv = dict(o.split("=", 1) for o in self.overrides if "=" in o)
        if by:
            return ",".join(f"{k}={kv.get(k, '-')}" for k in by)
        rest = []
        for o in self.overrides:
            if changes_results(o) and o not in common:
                key, value = o.split("=", 1)
                rest.append(f"{(short or {}).get(key, key)}={value}")
        return self.experiment + (f" [{', '.join(rest)}]" if rest else "")

    def scores(self, length_range: tuple[float, float] = GT_LENGTH_RANGE) -> Scores:
        """Per-query vectors on the GT windows in ``length_range`` (the official full range by default)."""
        if length_range not in self._scores:
            gt = _ground_truth(self.gt_path)
            preds = {q: p["pred_relevant_windows"] for q, p in self.predictions.items()}
            qids, ap, r1 = per_query_scores(preds, {q: gt[q] for q in preds}, length_range, allow_empty=True)
            self._scores[length_range] = Scores(qids, metric_vectors(ap, r1))
        return self._scores[length_range]

    def setting(self, dotted: str) -> Any:
        """A value of the run's resolved config (``augment.backtranslation.pivots``), None when absent."""
        node: Any = self.config
        for part in dotted.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return None
            node = node[part]
        return node


def _load_run(folder: RunFolder) -> Run | None:
    if not folder.info_file.is_file():
        return None
    info = folder.info()
    gt_path = folder.annotations("test")
    if gt_path is None:
        info_name = folder.rel(folder.info_file)
        raise InputError(f"{info_name} names no test annotations (a run from an older amr?)", folder.info_file)
    preds_path = folder.predictions("test")
    if not preds_path.is_file():
        why = "intervals and per-length metrics need it"
        raise InputError(f"run has no {folder.rel(preds_path)} ({why})", folder.path)
    if not gt_path.is_file():
        raise InputError(f"the run's test annotations {gt_path} are missing (moved or deleted?)", folder.path)
    metrics = folder.test_metrics_record()
    run = Run(folder.path, info["experiment"], info["overrides"], info["seed"], metrics, gt_path)
    if info.get("pretrain_checkpoint"):
        run.pretrain_dir = Path(info["pretrain_checkpoint"]).parent
    run.predictions = load_predictions(preds_path, gt_qids=set(_ground_truth(gt_path)))
    run.config = folder.config()
    return run


def find_runs(roots: Sequence[str | Path]) -> list[Run]:
    """Every finished run below ``roots``, all tested on the same test annotations.

    Raises:
        InputError: a missing folder, no finished run, a run without predictions, or runs tested on
            different annotation files (a sweep mixing datasets).
    """
    runs = []
    for root in map(Path, roots):
        if not root.exists():
            raise InputError("no such run or multirun folder", root)
        runs += [r for folder in finished_runs(root) if (r := _load_run(folder)) is not None]
    if not runs:
        what = f"no finished run ({TEST_METRICS} with {RUN_INFO}) below the given folders"
        raise InputError(what, ", ".join(map(str, roots)))
    by_data: dict[str, list[Run]] = defaultdict(list)
    for r in runs:
        by_data[data_digest(r.gt_path)].append(r)
    if len(by_data) > 1:
        (a, *_), (b, *_) = list(by_data.values())[:2]
        raise InputError(
            f"runs were tested on different data ({a.gt_path} for {a.path.name}, {b.gt_path} for {b.path.name}); "
            "report one dataset at a time",
            b.path,
        )
    return runs


def check_by(runs: Sequence[Run], by: Sequence[str] | None) -> None:
    """Every ``--by`` key must be overridden by some run (a misspelt key would pool them all)."""
    known = sorted({o.split("=", 1)[0].lstrip("+~") for r in runs for o in r.overrides if "=" in o})
    for key in by or ():
        if key not in known:
            raise InputError(f"no run overrides '{key}' (the runs override: {', '.join(known)})", "--by")


def group_systems(runs: Sequence[Run], by: Sequence[str] | None = None) -> dict[str, list[Run]]:
    """Runs by system (seeds of one system together), in the order the systems first appear."""
    common = frozenset.intersection(*(frozenset(r.overrides) for r in runs)) if runs else frozenset()
    keys = {o.split("=", 1)[0] for r in runs for o in r.overrides if "=" in o}
    last = defaultdict(set)
    for key in keys:
        last[key.rsplit(".", 1)[-1]].add(key)
    # a dotted key is named by its last part when no other key of the sweep ends alike
    short = {k: k.rsplit(".", 1)[-1] for k in keys if len(last[k.rsplit(".", 1)[-1]]) == 1}
    groups: dict[str, list[Run]] = defaultdict(list)
    for r in runs:
        groups[r.system(by, common, short)].append(r)
    return dict(groups)


def seed_matrix(
    runs: Sequence[Run], metric: str, length_range: tuple[float, float] = GT_LENGTH_RANGE
) -> tuple[list[str], np.ndarray]:
    """One system's per-query values: (S seeds, Q common queries), queries in sorted qid order."""
    scores = [r.scores(length_range) for r in runs]
    common = sorted(set.intersection(*(set(s.qids) for s in scores))) if scores else []
    rows = []
    for s in scores:
        where = {q: i for i, q in enumerate(s.qids)}
        rows.append(s.vectors[metric][[where[q] for q in common]])
    return common, np.asarray(rows, dtype=float).reshape(len(scores), len(common))


def stage_curves(run: Run, metrics: Sequence[str]) -> dict[str, tuple[dict[str, dict[int, float]], int | None]]:
    """Each logged stage's validation values by epoch (``metric -> {epoch: value}``, the first epoch
    is 1) and its best epoch.

    Only epochs that trained count: a validation row at an epoch without a training row (the
    best checkpoint's re-validation after fitting, in logs written before it stopped being
    logged) is not a point of the curve.
    """
    out = {}
    folders = [run.path] + ([run.pretrain_dir] if run.pretrain_dir is not None else [])
    for stage_dir in sorted(d for folder in folders for d in stage_logs(folder)):
        values: dict[str, dict[int, float]] = {m: {} for m in {*metrics, run.config.get("monitor", MONITOR)}}
        trained: set[int] = set()
        for csv_path in csv_attempts(stage_dir):  # a resumed stage: earlier attempts first
            with csv_path.open() as f:
                for row in csv.DictReader(f):
                    epoch = int(row["epoch"]) + 1  # 1 = the first epoch, as the training log counts
                    if row.get("train/loss"):
                        trained.add(epoch)
                    for m in values:
                        if row.get(f"val/{m}"):
                            values[m][epoch] = float(row[f"val/{m}"])
        if trained:
            values = {m: {e: v for e, v in pts.items() if e in trained} for m, pts in values.items()}
        monitor = values[run.config.get("monitor", MONITOR)]
        best = min((e for e, v in monitor.items() if v == max(monitor.values())), default=None)
        if any(values.values()):
            out[stage_dir.name] = ({m: values[m] for m in metrics}, best)
    return out
