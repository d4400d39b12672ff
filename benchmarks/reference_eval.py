"""A plain per-query Python loop implementation of the official metrics, written straight from the
specification. It is the yardstick for the vectorised evaluator (speed benchmark and property
tests), not part of the product."""

from __future__ import annotations

import numpy as np

THRESHOLDS = [float(f"{t:.2f}") for t in np.linspace(0.5, 0.95, 10)]


def _iou_row(p: list[float], gts: list[list[float]]) -> np.ndarray:
    out = []
    for g in gts:
        inter = max(0.0, min(p[1], g[1]) - max(p[0], g[0]))
        union = (p[1] - p[0]) + (g[1] - g[0]) - inter
        out.append(np.float64(inter) / np.float64(union) if union != 0 else (np.nan if inter == 0 else np.inf))
    return np.array(out, dtype=float)


def _ap(preds: list[list[float]], gts: list[list[float]], thr: float) -> float:
    preds = sorted(preds[:10], key=lambda r: -r[2])
    locked: set[int] = set()
    tp, fp = [], []
    for p in preds:
        ious = _iou_row(p, gts)
        hit = 0
        for j in np.argsort(ious)[::-1]:
            if ious[j] < thr:
                break
            if j in locked:
                continue
            hit = 1
            locked.add(int(j))
            break
        tp.append(hit)
        fp.append(1 - hit)
    tp_c = np.cumsum(tp).astype(float)
    fp_c = np.cumsum(fp).astype(float)
    rec = tp_c / len(gts)
    prec = tp_c / (tp_c + fp_c)
    mprec = np.hstack([[0], prec, [0]])
    mrec = np.hstack([[0], rec, [1]])
    for i in range(len(mprec) - 2, -1, -1):
        mprec[i] = max(mprec[i], mprec[i + 1])
    idx = np.where(mrec[1:] != mrec[:-1])[0] + 1
    return float(np.sum((mrec[idx] - mrec[idx - 1]) * mprec[idx]))


def evaluate_loop(preds: dict[str, list[list[float]]], gts: dict[str, list[list[float]]]) -> dict:
    aps, r1 = [], []
    for qid, rows in preds.items():
        g = [w for w in gts[qid] if 0 < w[1] - w[0] <= 1500]
        if not g:
            continue
        aps.append([_ap(rows, g, t) for t in THRESHOLDS])
        top = rows[0][:2]
        ious = _iou_row(top, g)
        best = g[int(np.argmax(ious))]
        inter = max(0.0, min(top[1], best[1]) - max(top[0], best[0]))
        hull = max(top[1], best[1]) - min(top[0], best[0])
        r1.append(inter / hull if hull != 0 else 0.0)
    ap_thr = np.array(aps).mean(0)
    r1_arr = np.array(r1)
    mr_map = {str(t): float(f"{100 * v:.2f}") for t, v in zip(THRESHOLDS, ap_thr, strict=True)}
    mr_map["average"] = float(f"{100 * np.mean(ap_thr):.2f}")
    mr_r1 = {str(t): float(f"{100 * np.mean(r1_arr >= t):.2f}") for t in THRESHOLDS}
    return {"MR-mAP": mr_map, "MR-R1": mr_r1}
