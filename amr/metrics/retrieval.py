"""The official DCASE 2026 Task 6 moment-retrieval metrics, vectorised over queries.

Same numbers as the Moment-DETR ``standalone_eval`` used by the baseline, to the last rounded digit:

* GT windows are kept only with length in (0, 1500]; queries left without windows are dropped
  together with their predictions ("full" range).
* mAP@IoU: per query, the first 10 listed predictions are sorted by score (stable), greedily matched
  to GT windows in NumPy's ``argsort`` order of IoU (ties broken as NumPy breaks them), AP with VOC
  interpolation; averaged over queries, then over the thresholds 0.50:0.05:0.95.
* R1@IoU: the *first listed* prediction against the GT window of highest IoU (first on ties); the
  IoU there divides by the hull ``max(ed) - min(st)``, as the official code does, and a zero hull
  scores 0.
* Every figure is ``100 * value`` rounded with ``f"{x:.2f}"``.

Per-length metrics follow the length-range method that the official evaluator carries commented out
(Moment-DETR's ``get_data_by_range``): for a bucket ``(lo, hi]`` each query keeps only its GT windows
with ``lo < length <= hi``, queries left without one are dropped with their predictions, and the
metrics above are computed on what remains. A query with windows of several lengths counts in
several buckets. An empty bucket has no metrics (``None``), where the official code would fail.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from amr.metrics.iou import official_cross_iou

THRESHOLDS: tuple[float, ...] = tuple(float(f"{t:.2f}") for t in np.linspace(0.5, 0.95, 10))
MAX_PREDICTIONS = 10
GT_LENGTH_RANGE = (0.0, 1500.0)

BRIEF_KEYS = ("MR-full-R1@0.5", "MR-full-R1@0.7", "MR-full-mAP", "MR-full-mAP@0.5", "MR-full-mAP@0.75")
# the short name each brief key is logged, tabulated and charted under
SHORT_NAMES = dict(zip(BRIEF_KEYS, ("R1@0.5", "R1@0.7", "mAP", "mAP@0.5", "mAP@0.75"), strict=True))
# The tracked metric: the best checkpoint is the first epoch reaching its maximum on validation (the
# official selection); the hyper-parameter search maximises it; reports mark its best epoch.
MONITOR = "R1@0.7"
MONITOR_LOGGED = f"val/{MONITOR}"  # as the training module logs it


# Ground-truth length buckets fit for CASTELLA (median moment about 4 s, half of them 3 s or
# shorter): the edges of (0, 3], (3, 10], (10, 30], (30, 1500] seconds.
DEFAULT_BUCKET_EDGES: tuple[float, ...] = (0.0, 3.0, 10.0, 30.0, GT_LENGTH_RANGE[1])


def logged_names(brief: Mapping[str, float | None]) -> dict[str, float]:
    """The brief figures under the names they are logged with: ``R1@0.7`` for the official
    ``MR-full-R1@0.7``, ``0-3s/R1@0.7`` for a bucket's ``MR-0-3s-R1@0.7``; empty buckets left out."""
    out = {}
    for key, value in brief.items():
        rng, _, short = key[len("MR-") :].rpartition("-")
        if value is not None:
            out[short if rng == "full" else f"{rng}/{short}"] = value
    return out


def _round(x: float) -> float:
    return float(f"{100 * x:.2f}")


def length_buckets(edges: Sequence[float]) -> dict[str, tuple[float, float]]:
    """Named ``(lo, hi]`` ranges between consecutive edges: ``0-3s``, ..., and ``30s+`` for a last
    bucket that ends at the official 1500 s bound.

    Raises:
        ValueError: fewer than two edges, a negative edge, or edges not strictly increasing.
    """
    e = [float(x) for x in edges]
    if len(e) < 2 or e[0] < 0 or any(b <= a for a, b in zip(e, e[1:], strict=False)):
        raise ValueError(f"length bucket edges must be >= 0 and strictly increasing (at least two), got {list(edges)}")
    names = {}
    for lo, hi in zip(e, e[1:], strict=False):
        name = f"{lo:g}s+" if hi == GT_LENGTH_RANGE[1] and lo > 0 else f"{lo:g}-{hi:g}s"
        names[name] = (lo, hi)
    return names


def filter_gt(windows: np.ndarray, length_range: tuple[float, float] = GT_LENGTH_RANGE) -> np.ndarray:
    """Keep GT windows with ``lo < length <= hi`` (by default the official "full" range). windows: (n, 2)."""
    lengths = windows[:, 1] - windows[:, 0]
    lo, hi = length_range
    return windows[(lengths > lo) & (lengths <= hi)]


def _numpy_sum_small(vals: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Row sums of (N, n<=16) values whose first ``count`` entries are the ones to add (the rest are
    zeros), in the exact order NumPy's pairwise ``np.sum`` adds a compact array of ``count`` entries
    (sequential below 8 entries, eight partial sums from 8 on), so the AP sums agree bit for bit."""
    n = vals.shape[1]
    seq = np.zeros(vals.shape[0])
    for i in range(n):
        seq = seq + vals[:, i]
    if n < 8:
        return seq
    r = vals[:, :8]
    pw = ((r[:, 0] + r[:, 1]) + (r[:, 2] + r[:, 3])) + ((r[:, 4] + r[:, 5]) + (r[:, 6] + r[:, 7]))
    for i in range(8, n):
        pw = pw + vals[:, i]
    return np.where(count >= 8, pw, seq)


def _ap_group(preds: np.ndarray, n_preds: np.ndarray, gts: np.ndarray, thr: np.ndarray) -> np.ndarray:
    """AP for queries that all have the same number G of GT windows.

    Args:
        preds: (Q, P, 3) rows [st, ed, score], already sorted by descending score, padded after n_preds.
        n_preds: (Q,) number of real rows.
        gts: (Q, G, 2).
        thr: (T,) IoU thresholds.
    Returns:
        (Q, T) average precision.
    """
    q, p, _ = preds.shape
    g = gts.shape[1]
    t = thr.shape[0]
    iou = official_cross_iou(preds[..., :2], gts)  # (Q, P, G)
    # The official code sorts each (G,) row with ndarray.argsort() and walks it backwards; sorting the
    # same rows with the same kind keeps its tie order.
    order = np.argsort(iou, axis=-1)[..., ::-1]
    iou_sorted = np.take_along_axis(iou, order, axis=-1)
    locked = np.zeros((q, t, g), dtype=bool)
    tp = np.zeros((q, t, p))
    valid = np.arange(p)[None, :] < n_preds[:, None]  # (Q, P)
    rows = np.arange(q)[:, None]
    cols = np.arange(t)[None, :]
    for i in range(p):
        o = order[:, i, :]  # (Q, G)
        below = iou_sorted[:, i, None, :] < thr[None, :, None]  # (Q, T, G); NaN is never below
        locked_sorted = np.take_along_axis(locked, np.broadcast_to(o[:, None, :], (q, t, g)), axis=-1)
        stop = below | ~locked_sorted
        first = stop.argmax(-1)  # (Q, T)
        hit = stop.any(-1) & ~np.take_along_axis(below, first[..., None], -1)[..., 0] & valid[:, i, None]
        tp[:, :, i] = hit
        j = o[rows, first]  # GT index in original order, (Q, T)
        locked[rows, cols, j] |= hit
    fp = valid[:, None, :] & (tp == 0)
    tp_c = np.cumsum(tp, axis=-1)
    fp_c = np.cumsum(fp, axis=-1).astype(float)
    rec = tp_c / float(g)
    with np.errstate(divide="ignore", invalid="ignore"):
        prec = tp_c / (tp_c + fp_c)
    prec = np.where(valid[:, None, :], prec, 0.0)  # padded rows never raise the interpolated precision
    # pad rows repeat the last real recall, so they add no recall step and no area
    last = np.take_along_axis(rec, (n_preds - 1)[:, None, None].repeat(t, 1), -1)
    rec = np.where(valid[:, None, :], rec, last)
    zeros = np.zeros((q, t, 1))
    mprec = np.concatenate([zeros, prec, zeros], -1)
    mrec = np.concatenate([zeros, rec, zeros + 1], -1)
    mprec = np.maximum.accumulate(mprec[..., ::-1], axis=-1)[..., ::-1]
    step = (mrec[..., 1:] - mrec[..., :-1]).reshape(q * t, -1)
    counted = step != 0
    contrib = np.where(counted, step * mprec[..., 1:].reshape(q * t, -1), 0.0)
    # pack the counted entries to the front, as the official boolean indexing does
    pack = np.argsort(~counted, axis=1, kind="stable")
    contrib = np.take_along_axis(contrib, pack, 1)
    return _numpy_sum_small(contrib, counted.sum(1)).reshape(q, t)


def _mean_ap(preds: list[np.ndarray], gts: list[np.ndarray]) -> np.ndarray:
    """(Q, T) AP of each query. preds[i]: (n_i, 3) listed order; gts[i]: (G_i, 2) filtered."""
    thr = np.asarray(THRESHOLDS)
    ap = np.zeros((len(preds), len(thr)))
    n_gt = np.array([len(g) for g in gts])
    for g in np.unique(n_gt):
        idx = np.flatnonzero(n_gt == g)
        n_preds = np.array([min(len(preds[i]), MAX_PREDICTIONS) for i in idx])
        width = int(n_preds.max())
        batch = np.zeros((len(idx), width, 3))
        for k, i in enumerate(idx):
            rows = preds[i][:MAX_PREDICTIONS]
            rows = rows[np.argsort(-rows[:, 2], kind="stable")]
            batch[k, : len(rows)] = rows
        gt = np.stack([gts[i] for i in idx])
        ap[idx] = _ap_group(batch, n_preds, gt, thr)
    return ap


def _recall_at_one(top1: np.ndarray, gts: list[np.ndarray]) -> np.ndarray:
    """(Q,) hull IoU of the first listed prediction with its best GT window. top1: (Q, 2)."""
    g_max = max(len(g) for g in gts)
    gt = np.zeros((len(gts), g_max, 2))
    pad = np.ones((len(gts), g_max), dtype=bool)
    for i, g in enumerate(gts):
        gt[i, : len(g)] = g
        pad[i, : len(g)] = False
    iou = official_cross_iou(top1[:, None, :], gt)[:, 0, :]  # (Q, G)
    iou = np.where(pad, -np.inf, iou)
    best = gt[np.arange(len(gts)), np.argmax(iou, axis=1)]  # first maximum; NaN counts as maximal
    inter = np.maximum(0, np.minimum(top1[:, 1], best[:, 1]) - np.maximum(top1[:, 0], best[:, 0]))
    hull = np.maximum(top1[:, 1], best[:, 1]) - np.minimum(top1[:, 0], best[:, 0])
    return np.divide(inter, hull, out=np.zeros_like(inter), where=hull != 0)


def per_query_scores(
    predictions: Mapping[str, np.ndarray],
    ground_truth: Mapping[str, np.ndarray],
    length_range: tuple[float, float] = GT_LENGTH_RANGE,
    allow_empty: bool = False,
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Per-query ingredients of the official metrics, for bootstrap statistics.

    ``length_range``: keep GT windows with ``lo < length <= hi`` (the official "full" range by
    default, a length bucket otherwise); queries left without windows are dropped.

    Returns:
        qids kept after the GT length filter, AP (Q, T) at each threshold, top-1 hull IoU (Q,).
        ``100 * mean`` over queries of these gives the official numbers before rounding.

    Raises:
        ValueError: no query is left (unless ``allow_empty``, which returns empty arrays).
    """
    qids, preds, gts = [], [], []
    for qid, rows in predictions.items():
        g = filter_gt(np.asarray(ground_truth[qid], dtype=float).reshape(-1, 2), length_range)
        if len(g) == 0:
            continue
        qids.append(qid)
        preds.append(np.asarray(rows, dtype=float).reshape(-1, 3))
        gts.append(g)
    if not qids:
        if allow_empty:
            return [], np.zeros((0, len(THRESHOLDS))), np.zeros(0)
        raise ValueError(f"no query has a GT window of length in ({length_range[0]:g}, {length_range[1]:g}]")
    return qids, _mean_ap(preds, gts), _recall_at_one(np.stack([p[0, :2] for p in preds]), gts)


def _tables(ap: np.ndarray, r1_iou: np.ndarray) -> dict[str, dict[str, float]]:
    """The official per-threshold tables from per-query AP (Q, T) and top-1 IoU (Q,)."""
    ap_thr = ap.mean(0)
    mr_map = {str(t): _round(v) for t, v in zip(THRESHOLDS, ap_thr, strict=True)}
    mr_map["average"] = _round(float(np.mean(ap_thr)))
    mr_r1 = {str(t): _round(float(np.mean(r1_iou >= t))) for t in THRESHOLDS}
    return {"MR-mAP": mr_map, "MR-R1": mr_r1}


def _brief(name: str, tables: Mapping[str, Mapping[str, float]] | None) -> dict[str, float | None]:
    """The five brief figures of one length range (``None`` for an empty bucket)."""
    keys = (("MR-R1", "0.5"), ("MR-R1", "0.7"), ("MR-mAP", "average"), ("MR-mAP", "0.5"), ("MR-mAP", "0.75"))
    return {
        f"MR-{name}-{short}": (tables[table][thr] if tables is not None else None)
        for short, (table, thr) in zip(SHORT_NAMES.values(), keys, strict=True)
    }


def evaluate(
    predictions: Mapping[str, np.ndarray],
    ground_truth: Mapping[str, np.ndarray],
    buckets: Mapping[str, tuple[float, float]] | None = None,
) -> dict[str, Any]:
    """Official metrics, and optionally per GT-length bucket.

    Args:
        predictions: qid -> (n, 3) array of ``[st, ed, score]`` rows in the submitted order (n >= 1).
        ground_truth: qid -> (m, 2) array of GT windows. Must hold exactly the predicted qids.
        buckets: name -> ``(lo, hi]`` seconds (see ``length_buckets``); None: the official output only.

    Returns:
        ``{"brief": {...}, "full": {"MR-mAP": {thr: v, ..., "average": v}, "MR-R1": {thr: v}}}``
        exactly as the official evaluator writes it. With buckets, ``brief`` also holds
        ``MR-<bucket>-<metric>`` and each bucket gets ``{"range", "n_queries", "MR-mAP", "MR-R1"}``
        (the tables ``None`` when no query falls in it).
    """
    if set(predictions) != set(ground_truth):
        missing = sorted(set(ground_truth) - set(predictions))
        extra = sorted(set(predictions) - set(ground_truth))
        raise ValueError(
            f"qid sets differ: {len(missing)} without prediction {missing[:5]}, "
            f"{len(extra)} not in ground truth {extra[:5]}"
        )
    _, ap, r1_iou = per_query_scores(predictions, ground_truth)
    full = _tables(ap, r1_iou)
    out: dict[str, Any] = {"brief": _brief("full", full), "full": full}
    for name, rng in (buckets or {}).items():
        if name in ("full", "brief"):
            raise ValueError(f"length bucket name {name!r} is reserved")
        qids, ap_b, r1_b = per_query_scores(predictions, ground_truth, rng, allow_empty=True)
        tables = _tables(ap_b, r1_b) if qids else None
        out[name] = {"range": list(rng), "n_queries": len(qids), **(tables or {"MR-mAP": None, "MR-R1": None})}
        out["brief"].update(_brief(name, tables))
    return out
