"""Options and helpers several ``amr`` commands share."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from amr.clap.encoders import AudioTextEncoder


def encoder_factory(args: argparse.Namespace) -> Callable[[], AudioTextEncoder]:
    """Builds the command's encoder (``--encoder``; MS-CLAP 2023 for commands without it) when called."""

    def make() -> AudioTextEncoder:
        from amr.clap.encoders import build_encoder

        enc = build_encoder(getattr(args, "encoder", "msclap2023"), args.clap_weights, args.device)
        print(enc.report.line(), file=sys.stderr)
        return enc

    return make


def clap_options(p: argparse.ArgumentParser, encoders: bool = False) -> None:
    """``--clap-weights``, ``--device``; with ``encoders``, ``--encoder`` (which one extracts)."""
    if encoders:
        from amr.data.features import EXTRACTED

        p.add_argument("--encoder", choices=EXTRACTED, default="msclap2023", help="the features group option written")
    p.add_argument(
        "--clap-weights",
        type=Path,
        help="local encoder weights: MS-CLAP 2023 .pth, or a LAION-CLAP .pt (default: the hub download)",
    )
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
