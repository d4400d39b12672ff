"""The audio-text encoders amr runs on audio and text, by the name the ``features`` group gives
them (``features.name``); nothing heavy is imported until one is built."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from amr.errors import InputError

# name -> (module, class, input sample rate); each class reads 1 s windows at its rate
ENCODERS: dict[str, tuple[str, str, int]] = {
    "msclap2023": ("amr.clap.model", "ClapEncoder", 44_100),
    "laion_clap": ("amr.clap.laion", "LaionEncoder", 48_000),
}


class AudioTextEncoder(Protocol):
    """``audio``: (N, sample_rate) 1 s windows -> (N, audio_dim); ``text``: one (L_i, text_dim)
    array of token states per caption; ``report``: what loading the weights found."""

    sample_rate: int
    audio_dim: int
    report: Any

    def audio(self, windows: np.ndarray) -> np.ndarray: ...

    def text(self, captions: Sequence[str]) -> list[np.ndarray]: ...


def sample_rate(name: str) -> int:
    """The input rate of encoder ``name`` (one line when amr does not run that encoder)."""
    if name not in ENCODERS:
        raise InputError(f"amr does not extract {name} features; it extracts {', '.join(ENCODERS)}", name)
    return ENCODERS[name][2]


def build_encoder(name: str, weights: str | Path | None = None, device: str | None = None) -> AudioTextEncoder:
    """Encoder ``name`` with ``weights`` (None: its hub download) on ``device``."""
    sample_rate(name)
    module, cls, _ = ENCODERS[name]
    return getattr(importlib.import_module(module), cls)(weights, device)  # type: ignore[no-any-return]
