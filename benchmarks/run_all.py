"""`make bench`: every benchmark, each in its own process (so that each one's peak RSS is its own);
figures printed and merged into outputs/bench/latest.json."""

from __future__ import annotations

import subprocess
import sys

BENCHMARKS = (
    ("data", "bench_data"),
    ("eval", "bench_eval"),
    ("decoders", "bench_decode"),
    ("re-synthesis", "bench_resynth"),
    ("report", "bench_report"),
    ("train step", "bench_train"),
    ("stacked runs", "bench_stacked"),
    ("back-translation", "bench_backtranslate"),
)


def main() -> None:
    failed = []
    for title, module in BENCHMARKS:
        print(f"\n## {title}", flush=True)
        if subprocess.run([sys.executable, "-m", f"benchmarks.{module}"], check=False).returncode:
            failed.append(module)
    if failed:
        raise SystemExit(f"benchmarks failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
