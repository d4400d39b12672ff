"""``amr`` commands for results: scoring, submission files, reports, comparisons and ensembles."""

from __future__ import annotations

import argparse
from pathlib import Path

from amr.errors import InputError
from amr.io import check_output

BUCKETS_ARG: dict = dict(
    nargs="?",
    const="default",
    metavar="EDGES",
    help="also score per GT window length bucket; EDGES in seconds, e.g. 0,3,10,30,1500 (the default)",
)


def _bucket_option(spec: str | None) -> dict[str, tuple[float, float]] | None:
    """``--buckets [EDGES]`` as named ranges; a malformed list is a one-line error."""
    from amr.metrics.retrieval import DEFAULT_BUCKET_EDGES, length_buckets

    if spec is None:
        return None
    try:
        edges = DEFAULT_BUCKET_EDGES if spec == "default" else [float(x) for x in spec.split(",")]
        return length_buckets(edges)
    except ValueError as e:
        raise InputError(f"--buckets {spec}: {e}") from None


def _evaluate(args: argparse.Namespace) -> None:
    from amr.metrics.predictions import evaluate_files, write_metrics

    buckets = _bucket_option(args.buckets)
    if args.out:
        check_output(args.out, [args.pred, args.gt], args.overwrite)
    metrics = evaluate_files(
        args.pred, args.gt, allow_partial=args.allow_partial, allow_reversed=args.allow_reversed, buckets=buckets
    )
    brief = metrics["brief"]
    width = max(len(k) for k in brief)
    print(f"{'metric':<{width}}  value")
    for k, v in brief.items():
        print(f"{k:<{width}}  " + (f"{v:6.2f}" if v is not None else "     -"))
    for name in buckets or {}:
        lo, hi = metrics[name]["range"]
        print(f"{name}: GT windows of length in ({lo:g}, {hi:g}] s, {metrics[name]['n_queries']} queries")
    if args.out:
        write_metrics(args.out, metrics)
        print(f"full metrics written to {args.out}")


def _submission(args: argparse.Namespace) -> None:
    from amr.metrics.predictions import load_predictions, write_submission

    check_output(args.out, [args.pred], args.overwrite)
    preds = load_predictions(args.pred)
    write_submission(args.out, preds.values())
    print(f"{len(preds)} queries written to {args.out}")


def _report(args: argparse.Namespace) -> None:
    from amr.results.report import report

    by = [k for k in args.by.split(",") if k] if args.by else None
    buckets = _bucket_option(args.buckets) or {}
    edges = sorted({x for lo_hi in buckets.values() for x in lo_hi})
    metrics = [m for m in args.metrics.split(",") if m]
    if args.out:
        from amr.results.report.runs import find_runs

        check_output(args.out, [*args.runs, *(r.path for r in find_runs(args.runs))], resumes=True)
    print(report(args.runs, args.out, by, edges, args.reference, metrics))
    if args.out:
        print(f"\nwritten to {args.out}: report.md (tables, comparisons, figures), table.csv/json, buckets.json, *.png")


def _ensemble(args: argparse.Namespace) -> None:
    from amr.results.ensemble import ensemble

    check_output(args.out, args.runs, args.overwrite)
    try:
        weights = [float(w) for w in args.weights.split(",")] if args.weights else None
    except ValueError:
        raise InputError(f"--weights must be numbers separated by commas, got {args.weights!r}", "--weights") from None
    results = ensemble(args.runs, args.out, args.method, weights, args.iou)
    for split, metrics in results.items():
        brief = {k.removeprefix("MR-full-"): v for k, v in metrics["brief"].items() if k.startswith("MR-full-")}
        print(f"{split}: " + "  ".join(f"{k} {v:.2f}" for k, v in brief.items()))
    print(f"written to {args.out}: a run folder (its run record, predictions and test metrics, and how it was fused)")


def _compare(args: argparse.Namespace) -> None:
    from amr.results.report import compare

    print(compare(args.run_a, args.run_b))


def result_commands(sub: argparse._SubParsersAction) -> None:
    """Commands for scoring, submission files and reports."""
    e = sub.add_parser("evaluate", help="official metrics of a prediction file")
    e.add_argument("pred", type=Path, help="prediction JSONL with [st, ed, score] rows")
    e.add_argument("gt", type=Path, help="annotation JSONL with relevant_windows")
    e.add_argument("--out", type=Path, help="write the full metrics JSON here")
    e.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    e.add_argument("--allow-partial", action="store_true", help="score only the queries that were predicted")
    e.add_argument(
        "--allow-reversed",
        action="store_true",
        help="accept windows that end before they start (scored as the official evaluator does)",
    )
    e.add_argument("--buckets", **BUCKETS_ARG)
    e.set_defaults(fn=_evaluate)

    m = sub.add_parser("submission", help="DCASE submission file (scores dropped) from a prediction file")
    m.add_argument("pred", type=Path)
    m.add_argument("--out", type=Path, required=True)
    m.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    m.set_defaults(fn=_submission)

    r = sub.add_parser("report", help="multi-seed results table with bootstrap CIs, charts and curves")
    r.add_argument("runs", nargs="+", type=Path, help="run or multirun folders")
    r.add_argument("--by", default="", help="group by these override keys (default: all overrides but seed)")
    r.add_argument("--out", type=Path, help="write report.md, tables (md/csv/json) and PNG figures here")
    r.add_argument(
        "--buckets",
        default="default",
        metavar="EDGES",
        help="GT window length bucket edges in seconds (default 0,3,10,30,1500)",
    )
    r.add_argument("--reference", help="system the others are compared with (default: baseline, else the first)")
    r.add_argument(
        "--metrics",
        default="R1@0.5,R1@0.7,mAP",
        help="metrics of the figures, curves and comparisons (of R1@0.5,R1@0.7,mAP,mAP@0.5,mAP@0.75)",
    )
    r.set_defaults(fn=_report)

    en = sub.add_parser("ensemble", help="fuse several runs' predictions (weighted box fusion or score averaging)")
    en.add_argument("runs", nargs="+", type=Path, help="run folders (their validation and test predictions)")
    en.add_argument("--out", required=True, type=Path, help="folder for the fused predictions and metrics")
    en.add_argument("--method", default="wbf", choices=["wbf", "average"])
    en.add_argument("--weights", help="one weight per run, comma-separated (default: equal)")
    en.add_argument("--iou", type=float, default=0.55, help="WBF: IoU for a window to join a cluster")
    en.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    en.set_defaults(fn=_ensemble)

    k = sub.add_parser("compare", help="paired permutation test and interval over test queries: B minus A")
    k.add_argument("run_a", type=Path, help="a run folder, or a folder of one system's seeds")
    k.add_argument("run_b", type=Path, help="a run folder, or a folder of one system's seeds")
    k.set_defaults(fn=_compare)
