"""Audio in the official extractors' form: 44.1 kHz, one channel, 1.0 s windows with 1.0 s hop.

Reading uses soundfile, resampling soxr (high quality). The official scripts take the *first*
channel of multi-channel files (``audio[0]``); ``channel="mean"`` averages the channels instead.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import numpy as np

from amr.errors import InputError

SAMPLE_RATE = 44_100  # MS-CLAP 2023 input rate
WINDOW = SAMPLE_RATE  # 1.0 s windows, 1.0 s hop: one frame per second
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".opus", ".aiff", ".aif")

Channel = Literal["first", "mean"]


def read_audio(
    path: str | Path, max_seconds: float | None = 300.0, channel: Channel = "first", rate: int = SAMPLE_RATE
) -> np.ndarray:
    """Samples of ``path`` at ``rate`` (44.1 kHz: MS-CLAP's), float32, shape (n,); cut to
    ``max_seconds`` (None: whole file).

    Raises:
        InputError: unreadable, empty, silent or non-finite audio, or a sample rate of 0.
    """
    import soundfile as sf

    path = Path(path)
    try:
        info = sf.info(str(path))
        sr = int(info.samplerate)
        if sr <= 0:
            raise InputError(f"sample rate {sr}", path)
        # read a little more than needed so that resampling sees the same context as the official
        # resample-then-cut order; a 2-hour file is not decoded for 300 s of features
        frames = -1 if max_seconds is None else math.ceil((max_seconds + 1.0) * sr)
        x, sr = sf.read(str(path), frames=frames, dtype="float32", always_2d=True)
    except InputError:
        raise
    except Exception as e:  # libsndfile errors come as several types
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"unreadable audio ({reason})", path) from None
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise InputError("empty audio (no samples)", path)
    x = x[:, 0] if channel == "first" else x.mean(axis=1)
    if not np.isfinite(x).all():
        raise InputError("NaN or inf samples", path)
    if not np.any(x):
        raise InputError("silent audio (every sample is 0)", path)
    if sr != rate:
        import soxr

        x = soxr.resample(x, sr, rate, quality="HQ").astype(np.float32, copy=False)
    if max_seconds is not None:
        x = x[: int(max_seconds * rate)]
    return np.ascontiguousarray(x, dtype=np.float32)


def n_frames(n_samples: int, centered: bool = False, window: int = WINDOW) -> int:
    """Number of 1 s frames: floor(seconds), or floor(seconds) + 1 with 0.5 s padding on both sides."""
    if centered:
        n_samples += 2 * (window // 2)
    return 0 if n_samples < window else (n_samples - window) // window + 1


def windows(x: np.ndarray, centered: bool = False, window: int = WINDOW) -> np.ndarray:
    """(T, window) view of 1 s windows (``window`` samples: the rate) with 1 s hop; ``centered``
    zero-pads half a window on both sides first (as the Clotho-Moment features were made: frame i
    is centred at i seconds)."""
    if centered:
        half = window // 2
        x = np.pad(x, (half, half))
    t = n_frames(len(x), window=window)
    return x[: t * window].reshape(t, window)


def audio_windows(
    path: str | Path,
    max_seconds: float | None = 300.0,
    centered: bool = False,
    channel: Channel = "first",
    rate: int = SAMPLE_RATE,
) -> np.ndarray:
    """The (T, rate) windows of one file at ``rate`` (MS-CLAP's 44.1 kHz by default), T >= 1.

    Raises:
        InputError: as :func:`read_audio`, or a clip too short for one window.
    """
    win = windows(read_audio(path, max_seconds, channel, rate), centered, rate)
    if len(win) == 0:
        raise InputError("shorter than one 1 s window (no frame); --centered gives sub-second clips one", path)
    return win
