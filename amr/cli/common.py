"""Options and helpers several ``amr`` commands share."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from amr.clap.model import ClapEncoder


def encoder_factory(args: argparse.Namespace) -> Callable[[], ClapEncoder]:
    def make() -> ClapEncoder:
        from amr.clap.model import ClapEncoder

        enc = ClapEncoder(args.clap_weights, args.device)
        print(enc.report.line(), file=sys.stderr)
        return enc

    return make


def clap_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clap-weights", type=Path, help="local MS-CLAP 2023 .pth (default: msclap's hub download)")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: CUDA when present)")


def add_decode_options(p: argparse.ArgumentParser, calibrator: bool = True) -> None:
    """``--decode NAME --set KEY=VALUE`` (read by :func:`amr.inference.decoders.parse_decode`) and
    ``--calibrator PATH`` / ``--no-calibrator`` (:func:`calibrator_option`)."""
    from amr.inference.decoders import DECODERS

    p.add_argument("--decode", choices=list(DECODERS), help="decoder (default: the checkpoint's, else detr)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="a decoder setting, e.g. penalty=-2")
    if calibrator:
        which = p.add_mutually_exclusive_group()
        which.add_argument("--calibrator", type=Path, help="a calibrator written by amr calibrate (in its --out)")
        which.add_argument("--no-calibrator", action="store_true", help="ignore a calibrator beside the checkpoint")


def calibrator_option(args: argparse.Namespace) -> Path | bool:
    """``--calibrator PATH``: that file; ``--no-calibrator``: none; neither: one beside the checkpoint, if any."""
    return args.calibrator if args.calibrator is not None else not args.no_calibrator
