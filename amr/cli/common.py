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
