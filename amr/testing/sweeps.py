"""Simulated sweeps for tests and benchmarks: run folders as ``amr-train`` writes them (run.json,
test metrics and predictions, the saved config), from annotations shaped like CASTELLA's, without
training. Never imported by the rest of ``amr``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from amr.data.annotations import load_annotations
from amr.metrics.retrieval import evaluate
from amr.results.run_folder import RunFolder


def fake_sweep(root: Path, gt_path: Path, systems: dict[str, dict], seeds: tuple[int, ...] = (1, 2)) -> Path:
    """Run folders as ``amr-train`` writes them (run.json, test_metrics.json, the test predictions and
    .hydra/config.yaml), without training: each system's top window is its query's first GT window
    moved by ``noise`` x its length (0 is perfect), followed by 4 random windows.

    ``systems``: name -> {"overrides": [...], "pivots": [...], "stages": [...], "noise": float}.
    """
    queries = load_annotations(gt_path, require_windows=True)
    for k, (name, spec) in enumerate(systems.items()):
        for seed in seeds:
            rng = np.random.default_rng(1000 * k + seed)
            lines: list[dict[str, Any]] = []
            for q in queries:
                st, ed = (q.windows or [[0.0, 1.0]])[0]
                shift = spec["noise"] * (ed - st) * rng.normal(size=2)
                start = max(0.0, st + shift[0])
                top = [start, max(start + 0.5, ed + shift[1]), 0.9]
                rest = sorted(rng.uniform(0, q.duration, size=(4, 2)).tolist())
                rows = [top] + [[min(a, b), max(a, b), 0.5 - 0.1 * i] for i, (a, b) in enumerate(rest)]
                lines.append({"qid": q.qid, "query": q.query, "vid": q.vid, "pred_relevant_windows": rows})
            run = RunFolder(root / f"{k}_{name},seed={seed}")
            run.write_evaluation("test", lines, None)
            gt = {q.qid: np.asarray(q.windows) for q in queries}
            run.write_test_metrics(evaluate({ln["qid"]: np.asarray(ln["pred_relevant_windows"]) for ln in lines}, gt))
            overrides = [f"experiment={spec.get('experiment', name)}", *spec.get("overrides", []), f"seed={seed}"]
            info = {
                "experiment": spec.get("experiment", name),
                "overrides": overrides,
                "seed": seed,
                "annotations": {"test": str(gt_path)},
            }
            run.write_info(info)
            run.write_config(
                {
                    "augment": {
                        "backtranslation": {"pivots": spec.get("pivots", ["de"]), "stages": spec.get("stages", [])}
                    }
                }
            )
    return root


def fake_annotations(path: Path, n: int = 300, seed: int = 0) -> Path:
    """A test split shaped like CASTELLA's: 1-5 min recordings, 1-3 windows a query, lengths
    log-normal around 4 s."""
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n):
        duration = float(rng.integers(60, 300))
        windows = []
        for _ in range(int(rng.integers(1, 4))):
            length = float(np.clip(np.round(rng.lognormal(np.log(4.0), 1.0)), 1, 60))
            st = float(rng.integers(0, int(duration - length)))
            windows.append([st, st + length])
        lines.append(
            {
                "qid": f"q{i:04d}",
                "query": f"sound {i}",
                "vid": f"v{i}",
                "duration": duration,
                "relevant_windows": windows,
            }
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path
