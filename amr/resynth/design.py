"""What sets one kind of re-synthesised dataset apart from another: how a long recording is cut into
backgrounds, how a background's events are drawn, how its annotation lines read, and the names and
feature frames of the dataset it becomes. The run (``run.py``) is the same for every kind.

``Official`` is the public Clotho-Moment generator's recipe; ``castella.CastellaLike`` draws
CASTELLA-shaped recordings from the same sources.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np

from amr.resynth.recipe import Event, RecipeConfig, Recording, label_lines, place_events, window_starts

SPLIT_FIRST_QID = {"train": 0, "val": 60_000, "test": 80_000}  # numbered qids unique across a root's splits


class Design(Protocol):
    @property
    def name(self) -> str:
        """Annotation files: ``data/<name>_<split>_release.jsonl``."""
        ...

    @property
    def feat_dir(self) -> str:
        """Features: ``features/<feat_dir>/clap/<vid>.npz``."""
        ...

    @property
    def centered(self) -> bool:
        """Feature frames centred on whole seconds (Clotho-Moment: T = seconds + 1) or not."""
        ...

    @property
    def cfg(self) -> RecipeConfig:
        """Rates, trimming, levels, the videos' split."""
        ...

    def backgrounds(self, n_samples: int, sr: int, rng: np.random.Generator) -> list[tuple[int, int]]:
        """(start, length) in samples of each background a recording of ``n_samples`` at ``sr`` gives."""
        ...

    def draw(
        self,
        rng: np.random.Generator,
        durations: Mapping[str, float],
        captions: Mapping[str, Sequence[str]],
        duration_s: float,
    ) -> list[Event]:
        """The events of one background of ``duration_s`` from the clips' trimmed durations."""
        ...

    def lines(self, recordings: Sequence[Recording], split: str) -> list[dict]:
        """The split's annotation lines."""
        ...

    def settings(self) -> dict[str, Any]:
        """Every value the recordings depend on (a resumed run must have the same)."""
        ...


@dataclass(frozen=True)
class Official:
    """The public generator's Clotho-Moment recipe (see ``recipe.py``)."""

    cfg: RecipeConfig = field(default_factory=RecipeConfig)
    name: str = "clotho_moment"
    feat_dir: str = "clotho-moment"
    centered: bool = True

    def backgrounds(self, n_samples: int, sr: int, rng: np.random.Generator) -> list[tuple[int, int]]:
        size = int(round(self.cfg.window_s * sr))
        return [(s, size) for s in window_starts(n_samples, sr, self.cfg)]

    def draw(
        self,
        rng: np.random.Generator,
        durations: Mapping[str, float],
        captions: Mapping[str, Sequence[str]],
        duration_s: float,
    ) -> list[Event]:
        return place_events(rng, durations, captions, self.cfg)

    def lines(self, recordings: Sequence[Recording], split: str) -> list[dict]:
        """One line per event, qids counted from the split's first one unless the recipe gives them."""
        out: list[dict] = []
        for rec in recordings:
            out += label_lines(rec, SPLIT_FIRST_QID[split] + len(out))
        return out

    def settings(self) -> dict[str, Any]:
        return {"recipe": asdict(self.cfg)}
