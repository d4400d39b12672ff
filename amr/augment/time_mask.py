"""The time mask of the seed report: during training only, with probability ``p``, one stretch of
CLAP frames is zeroed (all feature dimensions, never the two time features appended after them)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass
class TimeMaskConfig:
    """``p``: chance that a training item is masked; ``max_ratio``: the longest stretch as a share of
    the item's frames; ``stages``: the training stages (``pretrain``, ``finetune``) that use it.
    The training config's ``augment.time_mask`` is this dataclass."""

    p: float = 0.15
    max_ratio: float = 0.10
    stages: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for key in ("p", "max_ratio"):
            value = getattr(self, key)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"augment.time_mask.{key} must be in [0, 1], got {value}")

    def used_in(self, stage: str) -> bool:
        return stage in self.stages and self.p > 0


def time_mask_span(n_frames: int, cfg: TimeMaskConfig, u: Sequence[float]) -> tuple[int, int] | None:
    """The masked stretch ``(start, length)`` of an item with ``n_frames`` valid frames, or None.

    With probability p: length uniform in 1..max(1, floor(max_ratio * n_frames)), start uniform so
    that the stretch lies inside the valid frames. ``u`` holds three uniform draws in [0, 1): the
    coin, the length, the start.
    """
    if u[0] >= cfg.p:
        return None
    longest = max(1, int(np.floor(cfg.max_ratio * n_frames)))
    length = min(1 + int(u[1] * longest), n_frames)
    start = int(u[2] * (n_frames - length + 1))
    return start, length


def apply_time_mask(aud: np.ndarray, span: tuple[int, int], n_time_features: int = 2) -> None:
    """Zero ``span`` of an item's (T, D + n_time_features) audio input in place, time features kept."""
    start, length = span
    aud[start : start + length, : aud.shape[1] - n_time_features] = 0.0
