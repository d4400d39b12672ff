"""Decoders on a whole test split: Clotho-Moment's size (6,649 queries of 60 frames) and a
CASTELLA-like one (1,000 queries of 300 frames): decode and evaluate with every decoder, and a
logistic calibrator scoring every candidate. Target: each in at most 10 s on this machine."""

from __future__ import annotations

import time

import numpy as np

from amr.inference.batch import Candidates
from amr.inference.calibration import features, fit, hits
from amr.inference.decoders import DECODERS, DecodeConfig
from amr.metrics.retrieval import evaluate
from benchmarks.common import peak_rss_mb, table, update_report

TARGET_S = 10.0


def split(n: int, t: int, seed: int = 0) -> tuple[Candidates, dict[str, np.ndarray]]:
    """``n`` queries on ``t``-frame recordings: 1-3 events each, a saliency curve that rises on them
    (smoothed noise around it), DETR rows near the events and elsewhere."""
    rng = np.random.default_rng(seed)
    cands, gts = Candidates(), {}
    kernel = np.ones(3) / 3
    for i in range(n):
        starts = rng.integers(0, t - 4, rng.integers(1, 4))
        events = np.stack([starts, np.minimum(t, starts + rng.integers(2, max(3, t // 4), len(starts)))], 1)
        curve = rng.normal(-2.0, 1.0, t)
        for a, b in events:
            curve[a:b] += 3.0
        detr = []
        for k in range(10):
            a, b = events[k % len(events)] if k < 5 else sorted(rng.integers(0, t, 2))
            a, b = max(0, a + rng.integers(-2, 3)), min(t, max(a + 1, b + rng.integers(-2, 3)))
            detr.append([float(a), float(max(b, a + 1)), float(rng.random())])
        detr.sort(key=lambda r: -r[2])
        cands.meta.append({"qid": f"q{i}", "query": "", "vid": f"v{i}"})
        cands.detr_rows.append(detr)
        cands.curves.append(np.convolve(curve, kernel, "same"))
        cands.durations.append(float(t))
        gts[f"q{i}"] = events.astype(float)
    return cands, gts


def time_decoders(cands: Candidates, gts: dict[str, np.ndarray]) -> dict[str, float]:
    out = {}
    for name in DECODERS:
        t = time.perf_counter()
        lines = cands.lines(DecodeConfig(name))
        evaluate({ln["qid"]: np.asarray(ln["pred_relevant_windows"]) for ln in lines}, gts)
        out[name] = time.perf_counter() - t
    lines = cands.lines(DecodeConfig("hybrid"))
    x = np.concatenate(
        [
            features(ln["pred_relevant_windows"], d, c, t)
            for ln, d, c, t in zip(lines, cands.detr_rows, cands.curves, cands.durations, strict=True)
        ]
    )
    y = np.concatenate([hits(ln["pred_relevant_windows"], gts[ln["qid"]]) for ln in lines])
    cal = fit(x, y, "logistic", DecodeConfig("hybrid"))
    t = time.perf_counter()
    lines = cands.lines(DecodeConfig("hybrid"), cal)
    evaluate({ln["qid"]: np.asarray(ln["pred_relevant_windows"]) for ln in lines}, gts)
    out["hybrid + logistic calibrator"] = time.perf_counter() - t
    return out


def main() -> dict:
    res: dict = {}
    rows = []
    for label, n, t in (("Clotho-Moment test size", 6649, 60), ("CASTELLA-like", 1000, 300)):
        cands, gts = split(n, t)
        times = time_decoders(cands, gts)
        res[f"{n}x{t}"] = times
        rows += [[label, n, t, name, f"{s:.2f} s"] for name, s in times.items()]
    res["peak_rss_mb"] = peak_rss_mb()
    print(table(rows, ["split", "queries", "frames", "decoder", "decode + evaluate"]))
    update_report("decode", res)
    slow = [f"{k} {name}" for k, v in res.items() if isinstance(v, dict) for name, s in v.items() if s > TARGET_S]
    if slow:
        raise SystemExit(f"over the {TARGET_S:.0f} s target: {', '.join(slow)}")
    return res


if __name__ == "__main__":
    main()
