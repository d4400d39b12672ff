"""``amr demo``: the web page (the ``demo`` extra)."""

from __future__ import annotations

import argparse
from pathlib import Path

from amr.cli.common import clap_options
from amr.errors import InputError, MissingExtra


def _demo(args: argparse.Namespace) -> None:
    try:
        import gradio  # noqa: F401
    except ImportError as e:
        raise MissingExtra(f"amr demo needs the optional extra: pip install -e '.[demo]' ({e})") from None
    from amr.demo.page import DemoConfig, serve

    for path in [*args.ckpt, *args.runs, *([args.data_root] if args.data_root else [])]:
        if not path.exists():
            raise InputError("not found", path)
    if not args.ckpt and not args.runs:
        raise InputError("give a checkpoint (--ckpt) or finished runs (--runs)", "amr demo")
    weights = str(args.clap_weights) if args.clap_weights else None
    cfg = DemoConfig(args.ckpt, args.runs, args.data_root, weights, args.device, args.host, args.port)
    print(f"amr demo on http://{args.host}:{args.port}/ (Ctrl-C stops it)", flush=True)
    serve(cfg)


def demo_commands(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("demo", help="a web page: ask a checkpoint where, compare runs query by query")
    d.add_argument("--ckpt", type=Path, action="append", default=[], help="a checkpoint to ask; repeatable")
    d.add_argument("--runs", type=Path, action="append", default=[], help="a run or sweep folder; repeatable")
    d.add_argument(
        "--data-root", type=Path, help="a data root whose splits' recordings (features extracted) are offered"
    )
    d.add_argument("--host", default="127.0.0.1", help="the address to serve on (default: this machine only)")
    d.add_argument("--port", type=int, default=7860)
    clap_options(d)
    d.set_defaults(fn=_demo)
