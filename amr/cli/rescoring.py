"""``amr decode`` and ``amr calibrate``: a finished run's checkpoint decoded again, settings chosen on
validation, score calibrators; and the decoding options of ``amr predict`` and ``amr submit``."""

from __future__ import annotations

import argparse
from dataclasses import fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from amr.errors import InputError

if TYPE_CHECKING:
    from amr.model.decode import DecodeConfig


def _value(key: str, text: str, flag: str) -> Any:
    from amr.model.decode import DecodeConfig

    kinds = {f.name: type(getattr(DecodeConfig(), f.name)) for f in fields(DecodeConfig) if f.name != "name"}
    if key not in kinds:
        raise InputError(f"unknown decode setting {key!r} (one of {', '.join(kinds)})", flag)
    try:
        return kinds[key](text)
    except ValueError:
        raise InputError(f"decode.{key} needs a {kinds[key].__name__}, got {text!r}", flag) from None


def _pairs(items: list[str] | None, flag: str) -> list[tuple[str, str]]:
    out = []
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not text:
            raise InputError(f"expected KEY=VALUE, got {item!r}", flag)
        out.append((key.removeprefix("decode."), text))
    return out


def decode_option(name: str | None, settings: list[str] | None) -> DecodeConfig | None:
    """``--decode NAME --set KEY=VALUE ...`` as a checked config (None: not given)."""
    from amr.model.decode import DecodeConfig

    if name is None:
        if settings:
            raise InputError("--set needs --decode NAME", "--set")
        return None
    cfg = replace(DecodeConfig(name), **{k: _value(k, v, "--set") for k, v in _pairs(settings, "--set")})
    try:
        cfg.check()
    except ValueError as e:
        raise InputError(str(e), "--decode") from None
    return cfg


def add_decode_options(p: argparse.ArgumentParser, calibrator: bool = True) -> None:
    from amr.model.decode import DECODERS

    p.add_argument("--decode", choices=list(DECODERS), help="decoder (default: the checkpoint's, else detr)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="a decoder setting, e.g. penalty=-2")
    if calibrator:
        p.add_argument(
            "--no-calibrator", action="store_true", help="ignore checkpoints/calibrator.json beside the checkpoint"
        )


def _choices(items: list[str] | None) -> dict[str, list[Any]]:
    return {k: [_value(k, v, "--choose") for v in text.split(",")] for k, text in _pairs(items, "--choose")}


def _outputs(runs: list[Path], out: Path) -> list[Path]:
    """One run -> ``out``; several -> ``out/<run folder name>``; refused when any exists."""
    targets = [out] if len(runs) == 1 else [out / r.resolve().name for r in runs]
    if len({t.name for t in targets}) != len(targets):
        raise InputError("several runs share a folder name; rescore them one at a time", "--out")
    for t in targets:
        if t.exists():
            raise InputError("output exists (a run folder is never overwritten)", t)
    return targets


def _rescore(args: argparse.Namespace, calibrate: str | None) -> None:
    from amr.rescore import Source, rescore

    decode = decode_option(args.decode, args.set)
    if not 0 < getattr(args, "target_iou", 0.7) <= 1:
        raise InputError(f"--target-iou must be in (0, 1], got {args.target_iou}", "--target-iou")
    choices = _choices(getattr(args, "choose", None))
    if args.metric is not None and not choices:
        raise InputError("only read with --choose (the validation metric a choice maximises)", "--metric")
    for run in args.runs:
        Source.of(run)  # every run checked before any work
    for run, out in zip(args.runs, _outputs(args.runs, args.out), strict=True):
        target = getattr(args, "target_iou", 0.7)
        metric = args.metric or "R1@0.7"
        res = rescore(run, out, decode, choices, metric, calibrate, getattr(args, "replace", False), target)
        brief = {k.removeprefix("MR-full-"): v for k, v in res["test"]["brief"].items() if k.startswith("MR-full-")}
        print(f"{out}: test " + " ".join(f"{k}={v:.2f}" for k, v in brief.items()))


def rescore_commands(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("decode", help="decode finished runs again: another decoder, settings chosen on validation")
    d.add_argument("runs", nargs="+", type=Path, help="run folders (run.json, checkpoints/best.ckpt)")
    d.add_argument("--out", required=True, type=Path, help="one run: the new run folder; several: a folder of them")
    add_decode_options(d, calibrator=False)
    d.add_argument("--choose", action="append", metavar="KEY=V1,V2,...", help="values to choose from on validation")
    d.add_argument("--metric", help="validation metric the choice maximises (default R1@0.7)")
    d.set_defaults(fn=lambda a: _rescore(a, None))

    c = sub.add_parser("calibrate", help="fit a score calibrator on validation; saved beside the checkpoint")
    c.add_argument("runs", nargs="+", type=Path, help="run folders, or folders written by amr decode")
    c.add_argument("--out", required=True, type=Path, help="the calibrated test and validation, as a run folder")
    c.add_argument("--method", choices=["logistic", "isotonic"], default="logistic")
    c.add_argument("--replace", action="store_true", help="replace a calibrator already beside the checkpoint")
    c.add_argument("--target-iou", type=float, default=0.7, help="a hit: IoU with a GT window at least this")
    add_decode_options(c, calibrator=False)
    c.set_defaults(metric=None)
    c.set_defaults(fn=lambda a: _rescore(a, a.method))
