"""``amr decode`` and ``amr calibrate``: a finished run's checkpoint decoded again, settings chosen on
validation, score calibrators."""

from __future__ import annotations

import argparse
from pathlib import Path

from amr.cli.common import add_decode_options
from amr.errors import InputError
from amr.metrics.retrieval import MONITOR


def _rescore(args: argparse.Namespace, calibrate: str | None) -> None:
    from amr.inference.decoders import parse_choices, parse_decode
    from amr.results.rescore import Source, output_folders, rescore

    decode = parse_decode(args.decode, args.set)
    if not 0 < getattr(args, "target_iou", 0.7) <= 1:
        raise InputError(f"--target-iou must be in (0, 1], got {args.target_iou}", "--target-iou")
    choices = parse_choices(getattr(args, "choose", None))
    if args.metric is not None and not choices:
        raise InputError("only read with --choose (the validation metric a choice maximises)", "--metric")
    for run in args.runs:
        Source.of(run)  # every run checked before any work
    for run, out in zip(args.runs, output_folders(args.runs, args.out), strict=True):
        target = getattr(args, "target_iou", 0.7)
        metric = args.metric or MONITOR
        res = rescore(run, out, decode, choices, metric, calibrate, target)
        brief = {k.removeprefix("MR-full-"): v for k, v in res["test"]["brief"].items() if k.startswith("MR-full-")}
        print(f"{out}: test " + " ".join(f"{k}={v:.2f}" for k, v in brief.items()))


def rescore_commands(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("decode", help="decode finished runs again: another decoder, settings chosen on validation")
    d.add_argument("runs", nargs="+", type=Path, help="finished run folders (their run record and best checkpoint)")
    d.add_argument("--out", required=True, type=Path, help="one run: the new run folder; several: a folder of them")
    add_decode_options(d, calibrator=False)
    d.add_argument("--choose", action="append", metavar="KEY=V1,V2,...", help="values to choose from on validation")
    d.add_argument("--metric", help=f"validation metric the choice maximises (default {MONITOR})")
    d.set_defaults(fn=lambda a: _rescore(a, None))

    c = sub.add_parser("calibrate", help="fit a score calibrator on validation, written under --out only")
    c.add_argument("runs", nargs="+", type=Path, help="run folders, or folders written by amr decode")
    c.add_argument(
        "--out",
        required=True,
        type=Path,
        help="the calibrated run folder, with its calibrator",
    )
    c.add_argument("--method", choices=["logistic", "isotonic"], default="logistic")
    c.add_argument("--target-iou", type=float, default=0.7, help="a hit: IoU with a GT window at least this")
    add_decode_options(c, calibrator=False)
    c.set_defaults(metric=None)
    c.set_defaults(fn=lambda a: _rescore(a, a.method))
