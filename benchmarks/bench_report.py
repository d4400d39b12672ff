"""`amr report` speed: a simulated sweep of 8 systems x 3 seeds on a CASTELLA-sized test split (2,000
queries): statistics (intervals overall and per length bucket, paired permutation tests against the
baseline), figures and report.md, end to end. Target: under a minute on 2 CPU cores."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from amr.results.report import report
from amr.testing.sweeps import fake_annotations, fake_sweep
from benchmarks.common import peak_rss_mb, table, update_report

TARGET_S = 60.0


def main() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        gt = fake_annotations(root / "data" / "castella_test_release.jsonl", n=2000)
        systems = {"baseline": {"stages": [], "noise": 0.5}}
        for k in range(7):
            systems[f"s{k}"] = {"experiment": "system1", "overrides": [f"optim.lr={k}e-4"], "noise": 0.45 - 0.03 * k}
        sweep = fake_sweep(root / "sweep", gt, systems, seeds=(1, 2, 3))
        t = time.perf_counter()
        report([sweep], root / "report")
        seconds = time.perf_counter() - t
    res = {"systems": 8, "seeds": 3, "queries": 2000, "seconds": seconds, "peak_rss_mb": peak_rss_mb()}
    print(
        table(
            [[8, 3, 2000, f"{seconds:.1f} s", f"{TARGET_S:.0f} s"]], ["systems", "seeds", "queries", "report", "target"]
        )
    )
    update_report("report", res)
    if seconds > TARGET_S:
        raise SystemExit(f"amr report took {seconds:.1f} s, target {TARGET_S:.0f} s")
    return res


if __name__ == "__main__":
    main()
