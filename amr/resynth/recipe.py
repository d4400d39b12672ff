"""The Clotho-Moment recipe: trimming foreground clips, placing them in a background window, and the
levels of the mixture (the facts of the public generator, restated).

- Trim: a clip keeps the whole seconds from the first to the last second whose mean power is above
  the clip's mean power minus ``clip_db`` dB; a trailing partial second is always dropped.
- Placement, per background window: the clips in random order; ``t += Exp(mean_gap_s)``, the next
  clip starts at ``t``, ``t += its duration``; the first clip that would end after the window's
  end stops the draw (it is not placed). Each event gets one of its clip's captions at random and a
  level ``fg_db`` uniform in ``fg_db_range``; events are sorted by start.
- Levels: the background's mean power is taken before it is attenuated by ``bg_db`` (uniform in
  ``bg_db_range``); each foreground is peak-normalised, then scaled by
  ``10^(fg_db / 20) * sqrt(background power)`` and added at ``int(start * sr)``; the mixture is
  peak-normalised.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RecipeConfig:
    sr: int = 32_000  # the mixtures' sample rate
    window_s: float = 60.0  # background window length
    hop_s: float = 1.0  # background window hop
    mean_gap_s: float = 30.0  # mean of the exponential gap before each event
    clip_db: float = 5.0  # trimming threshold below the clip's mean power
    fg_db_range: tuple[float, float] = (-5.0, 5.0)
    bg_db_range: tuple[float, float] = (-25.0, -15.0)
    split_ratio: tuple[int, int, int] = (7, 1, 2)  # videos of train : val : test, in listing order


@dataclass(frozen=True)
class Event:
    clip: str  # Clotho file stem
    caption: str
    fg_db: float
    start: float  # seconds from the window's start
    duration: float  # the trimmed clip's length, seconds
    qid: int | None = None  # a given recipe's query id (replay); None: counted in recording order
    offset: float = 0.0  # where the event's stretch starts in the trimmed clip, seconds
    query: int = 0  # events of one query share it (the same sound recurring); one query each by default


@dataclass(frozen=True)
class Recording:
    vid: str  # <video>_<start>_<end>
    video: str
    start_s: float
    bg_db: float
    events: tuple[Event, ...]
    duration_s: float = 60.0  # the background window's length


def trim_bounds(x: np.ndarray, sr: int, clip_db: float = 5.0) -> tuple[int, int]:
    """The whole seconds ``[onset, offset)`` a clip keeps; ``(0, 0)`` for one under a second."""
    x = np.asarray(x, dtype=np.float64)
    seconds = len(x) // sr
    if seconds == 0:
        return 0, 0
    threshold = np.mean(x**2) * 10 ** (-clip_db / 10)
    power = np.mean(x[: seconds * sr].reshape(seconds, sr) ** 2, axis=1)
    loud = np.flatnonzero(power > threshold)
    if len(loud) == 0:
        return 0, seconds
    return int(loud[0]), int(loud[-1]) + 1


def window_starts(n_samples: int, sr: int, cfg: RecipeConfig) -> list[int]:
    """Sample offsets of the background windows of a recording of ``n_samples`` at ``sr``."""
    size, hop = int(round(cfg.window_s * sr)), int(round(cfg.hop_s * sr))
    return list(range(0, n_samples - size + 1, hop)) if n_samples >= size else []


def vid_name(video: str, start_sample: int, sr: int, duration_s: float) -> str:
    start = round(start_sample / sr, 1)
    return f"{video}_{start}_{round(start + duration_s, 1)}"


def place_events(
    rng: np.random.Generator,
    durations: Mapping[str, float],
    captions: Mapping[str, Sequence[str]],
    cfg: RecipeConfig,
) -> list[Event]:
    """One background window's events (see the module's docstring), sorted by start."""
    keys = sorted(durations)
    events = []
    t = 0.0
    for i in rng.permutation(len(keys)):
        key = keys[i]
        t += rng.exponential(cfg.mean_gap_s)
        start, t = t, t + durations[key]
        if t > cfg.window_s:
            break
        caps = captions[key]
        caption = caps[int(rng.integers(len(caps)))]
        events.append(Event(key, caption, float(rng.uniform(*cfg.fg_db_range)), start, float(durations[key])))
    return sorted(events, key=lambda e: e.start)


def mix(bg: np.ndarray, foregrounds: Sequence[tuple[np.ndarray, Event]], bg_db: float, sr: int) -> np.ndarray:
    """The peak-normalised mixture (float64) of a background and its placed foregrounds."""
    bg = np.asarray(bg, dtype=np.float64)
    power = np.mean(bg**2)
    out = bg * 10 ** (bg_db / 20)
    for fg, ev in foregrounds:
        fg = np.asarray(fg, dtype=np.float64)
        peak = np.max(np.abs(fg), initial=0.0)
        if peak == 0:  # a silent stretch adds nothing
            continue
        a = int(ev.start * sr)
        n = max(0, min(len(fg), len(out) - a))
        out[a : a + n] += fg[:n] / peak * 10 ** (ev.fg_db / 20) * np.sqrt(power)
    peak = np.max(np.abs(out))
    return out / peak if peak > 0 else out


def label_lines(recording: Recording, first_qid: int) -> list[dict]:
    """The recording's annotation lines (one per event), qids counted from ``first_qid``."""
    return [
        {
            "qid": f"{first_qid + i if ev.qid is None else ev.qid:05d}",
            "query": ev.caption,
            "duration": int(recording.duration_s) if float(recording.duration_s).is_integer() else recording.duration_s,
            "vid": recording.vid,
            "relevant_windows": [[float(f"{ev.start:.1f}"), float(f"{ev.start + ev.duration:.1f}")]],
            "fg_dB": ev.fg_db,
        }
        for i, ev in enumerate(recording.events)
    ]
