"""Evaluation speed: the vectorised official metrics vs a plain per-query loop, 10,000 queries."""

from __future__ import annotations

import numpy as np

from amr.metrics.retrieval import DEFAULT_BUCKET_EDGES, evaluate, length_buckets
from amr.results.ensemble import fuse
from benchmarks.common import median_time, peak_rss_mb, table, update_report
from benchmarks.reference_eval import evaluate_loop


def make_queries(n: int, seed: int = 0) -> tuple[dict, dict]:
    rng = np.random.default_rng(seed)
    preds, gts = {}, {}
    for i in range(n):
        dur = int(rng.integers(60, 300))
        g = []
        for _ in range(int(rng.integers(1, 6))):
            st = float(rng.integers(0, dur - 5))
            g.append([st, float(min(dur, st + rng.integers(1, 40)))])
        rows = []
        for _ in range(10):
            st = float(rng.integers(0, dur - 5))
            rows.append([st, float(min(dur, st + rng.integers(0, 40))), round(float(rng.random()), 4)])
        preds[f"q{i}"] = rows
        gts[f"q{i}"] = g
    return preds, gts


def seed_runs(n_runs: int, n: int) -> list[dict]:
    """Prediction files of ``n_runs`` seeds of one system: one set of windows, moved and re-scored a
    little per seed (what an ensemble of seeds fuses)."""
    base, _ = make_queries(n)
    rng = np.random.default_rng(1)
    runs = []
    for _ in range(n_runs):
        run = {}
        for q, rows in base.items():
            r = np.asarray(rows) + np.c_[rng.normal(0, 1, (10, 2)), rng.normal(0, 0.05, 10)]
            run[q] = {"qid": q, "pred_relevant_windows": r[np.argsort(-r[:, 2])]}
        runs.append(run)
    return runs


def main() -> dict:
    n = 10_000
    preds, gts = make_queries(n)
    p_arr = {k: np.asarray(v) for k, v in preds.items()}
    g_arr = {k: np.asarray(v) for k, v in gts.items()}
    assert evaluate(p_arr, g_arr)["full"] == evaluate_loop(preds, gts)
    t_vec = median_time(lambda: evaluate(p_arr, g_arr), repeat=3)
    t_loop = median_time(lambda: evaluate_loop(preds, gts), repeat=1, warmup=0)
    buckets = length_buckets(DEFAULT_BUCKET_EDGES)
    t_buckets = median_time(lambda: evaluate(p_arr, g_arr, buckets), repeat=3)
    seeds = seed_runs(5, 6649)  # Clotho-Moment test size
    t_wbf = median_time(lambda: fuse(seeds, [1.0] * 5, "wbf"), repeat=1)
    res = {
        "queries": n,
        "wbf_5_runs_6649_queries_s": t_wbf,
        "vectorised_qps": n / t_vec,
        "with_buckets_qps": n / t_buckets,
        "loop_qps": n / t_loop,
        "speedup": t_loop / t_vec,
        "peak_rss_mb": peak_rss_mb(),
    }
    print(
        table(
            [
                [
                    n,
                    f"{res['vectorised_qps']:.0f}",
                    f"{res['with_buckets_qps']:.0f}",
                    f"{res['loop_qps']:.0f}",
                    f"{res['speedup']:.1f}x",
                ]
            ],
            ["queries", "vectorised q/s", "with 4 length buckets q/s", "per-query loop q/s", "speed-up"],
        )
    )
    print(f"weighted box fusion of 5 seeds x 6,649 queries (Clotho-Moment test size): {t_wbf:.2f} s")
    update_report("eval", res)
    return res


if __name__ == "__main__":
    main()
