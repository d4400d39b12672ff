"""`make bench`: every benchmark; figures printed and merged into outputs/bench/latest.json."""

from __future__ import annotations

from benchmarks import bench_backtranslate, bench_data, bench_eval, bench_train


def main() -> None:
    for name, mod in (
        ("data", bench_data),
        ("eval", bench_eval),
        ("train step", bench_train),
        ("back-translation", bench_backtranslate),
    ):
        print(f"\n## {name}")
        mod.main()


if __name__ == "__main__":
    main()
