"""CASTELLA-like recordings from Clotho clips and Walking Tours audio: the official machinery (trim,
levels, slices, the run) with the shape of CASTELLA's annotations, so that pre-training data looks
like the fine-tuning data.

Per background (a recording of a drawn length, in whole seconds):

- its length: the longest (``duration_range_s[1]``; CASTELLA's audio is cut at 300 s) with
  probability ``p_longest``, else uniform over the whole seconds of ``duration_range_s`` below it;
- its queries: their number drawn from ``queries`` (probabilities of 1, 2, ... queries), each a
  different clip with one of its captions;
- each query's windows (the same sound recurring): their number drawn from ``windows``
  (probabilities of 1, 2, ...), each a stretch of the query's trimmed clip of ``ceil(X)`` seconds,
  ``X ~ LogNormal(length_log_mean, length_log_std)``, at least 1 s and at most the clip, at a
  uniform whole-second offset in the clip, with its own level;
- placement: the stretches that fit in ``max_fill`` of the recording (in draw order) are laid out
  in a uniformly random order with uniformly random whole-second gaps (every arrangement without
  overlap equally likely); windows are listed in draw order (CASTELLA's are not sorted either).

Labels are CASTELLA's: one line per query, ``qid = <vid>_<n>``, ``duration`` the recording's
seconds, integer ``relevant_windows``. The defaults are :func:`fit` on CASTELLA's train annotations
(``conf/resynth/castella_like.yaml``).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from amr.errors import InputError
from amr.resynth.recipe import Event, RecipeConfig, Recording

CONFIG = Path(__file__).resolve().parents[2] / "conf" / "resynth" / "castella_like.yaml"
UNUSED = ("window_s", "hop_s", "mean_gap_s")  # the official recipe's, meaningless here


@dataclass(frozen=True)
class Distributions:
    """The fit values have no defaults here: they are the config file's (see the module docstring)."""

    duration_range_s: tuple[int, int]
    p_longest: float
    queries: tuple[float, ...]
    windows: tuple[float, ...]
    length_log_mean: float
    length_log_std: float
    max_fill: float = 0.9  # a guard, not fit: the events cover at most this share of a recording
    hop_s: int | None = None  # from one background's start to the next; None: back to back


def _probabilities(name: str, p: Sequence[float], path: Path = CONFIG) -> np.ndarray:
    a = np.asarray(p, dtype=np.float64)
    if a.ndim != 1 or len(a) == 0 or np.any(a < 0) or a.sum() <= 0:
        raise InputError(f"{name} must be a non-empty list of probabilities, got {list(p)}", path)
    return a / a.sum()


@dataclass(frozen=True)
class CastellaLike:
    """The castella-like design (see ``design.Design``)."""

    dist: Distributions
    cfg: RecipeConfig = field(default_factory=RecipeConfig)
    name: str = "castella_like"
    feat_dir: str = "castella-like"
    centered: bool = False  # CASTELLA's features: T = whole seconds, frame i covers [i, i + 1)

    def duration(self, rng: np.random.Generator) -> int:
        lo, hi = self.dist.duration_range_s
        return hi if hi <= lo or rng.random() < self.dist.p_longest else int(rng.integers(lo, hi))

    def backgrounds(self, n_samples: int, sr: int, rng: np.random.Generator) -> list[tuple[int, int]]:
        out, start = [], 0
        while start + (size := self.duration(rng) * sr) <= n_samples:
            out.append((start, size))
            start += size if self.dist.hop_s is None else self.dist.hop_s * sr
        return out

    def _stretches(self, rng: np.random.Generator, clip_s: int) -> list[tuple[int, int, float]]:
        """(offset, length, fg_db) of one query's windows in a clip of ``clip_s`` seconds."""
        k = 1 + int(rng.choice(len(self.dist.windows), p=_probabilities("windows", self.dist.windows)))
        out = []
        for _ in range(k):
            x = rng.lognormal(self.dist.length_log_mean, self.dist.length_log_std)
            length = min(clip_s, max(1, math.ceil(x)))
            out.append((int(rng.integers(0, clip_s - length + 1)), length, float(rng.uniform(*self.cfg.fg_db_range))))
        return out

    def draw(
        self,
        rng: np.random.Generator,
        durations: Mapping[str, float],
        captions: Mapping[str, Sequence[str]],
        duration_s: float,
    ) -> list[Event]:
        keys = sorted(durations)
        n_queries = 1 + int(rng.choice(len(self.dist.queries), p=_probabilities("queries", self.dist.queries)))
        picked: list[tuple[int, str, str, tuple[int, int, float]]] = []
        budget = int(self.dist.max_fill * duration_s)
        for q, i in enumerate(rng.choice(len(keys), size=min(n_queries, len(keys)), replace=False)):
            key = keys[int(i)]
            caps = captions[key]
            caption = caps[int(rng.integers(len(caps)))]
            for st in self._stretches(rng, int(durations[key])):
                if st[1] <= budget:
                    picked.append((q, key, caption, st))
                    budget -= st[1]
        n = len(picked)
        free = int(duration_s) - sum(p[3][1] for p in picked)
        slots = np.sort(rng.choice(free + n, size=n, replace=False))  # items among the gap units
        starts, laid = {}, 0
        for i, idx in enumerate(rng.permutation(n)):
            starts[int(idx)] = int(slots[i]) - i + laid
            laid += picked[int(idx)][3][1]
        return [
            Event(key, caption, db, float(starts[j]), float(length), offset=float(off), query=q)
            for j, (q, key, caption, (off, length, db)) in enumerate(picked)
        ]

    def lines(self, recordings: Sequence[Recording], split: str) -> list[dict]:
        out = []
        for rec in recordings:  # queries numbered from 1 (a query whose windows did not fit is gone)
            for number, q in enumerate(sorted({e.query for e in rec.events}), start=1):
                evs = [e for e in rec.events if e.query == q]
                out.append({
                    "qid": f"{rec.vid}_{number}",
                    "query": evs[0].caption,
                    "duration": int(rec.duration_s),
                    "vid": rec.vid,
                    "relevant_windows": [[int(e.start), int(e.start + e.duration)] for e in evs],
                    "fg_dB": [e.fg_db for e in evs],
                })  # fmt: skip
        return out

    def settings(self) -> dict[str, Any]:
        return {"recipe": asdict(self.cfg), "distributions": asdict(self.dist)}


def _typed(kind: type, values: dict[str, Any], path: Path) -> Any:
    """``kind(**values)`` with each value checked against the field's type (lists become tuples)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import MissingMandatoryValue, ValidationError

    try:
        obj: Any = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(kind), values))
    except (ValidationError, MissingMandatoryValue) as e:
        raise InputError(f"{e.full_key}: {str(e).splitlines()[0]}", path) from None
    return replace(obj, **{k: tuple(v) for k, v in vars(obj).items() if isinstance(v, list)})


def load(path: Path = CONFIG, overrides: Sequence[str] = ()) -> CastellaLike:
    """The design of a config file (``conf/resynth/castella_like.yaml`` by default) with ``key=value``
    overrides; an unknown, unused or malformed value is one line naming the file and the key."""
    from omegaconf import OmegaConf

    try:
        doc = OmegaConf.to_container(OmegaConf.merge(OmegaConf.load(path), OmegaConf.from_dotlist(list(overrides))))
    except Exception as e:  # noqa: BLE001 -- omegaconf's parse errors have no common base
        raise InputError(f"not a readable config ({e.__class__.__name__}: {e})", path) from None
    if not isinstance(doc, dict):
        raise InputError("a config is a mapping of settings", path)
    recipe_keys = {f.name for f in fields(RecipeConfig)} - set(UNUSED)
    dist_keys = {f.name for f in fields(Distributions)}
    for key in map(str, doc):
        if key not in recipe_keys | dist_keys:
            why = "is the official recipe's, not used here" if key in UNUSED else "is not a setting"
            raise InputError(f"{key} {why} (settings: {', '.join(sorted(recipe_keys | dist_keys))})", path)
    design = CastellaLike(
        _typed(Distributions, {str(k): v for k, v in doc.items() if k in dist_keys}, path),
        _typed(RecipeConfig, {str(k): v for k, v in doc.items() if k in recipe_keys}, path),
    )
    _check(design.dist, path)
    _check_recipe(design.cfg, path)
    return design


def _check_recipe(c: RecipeConfig, path: Path) -> None:
    """The recipe settings a mixture is built with: positive rates and lengths, ordered ranges."""
    problems = [
        (c.sr < 1, f"sr must be a positive sample rate, got {c.sr}"),
        (not c.window_s > 0, f"window_s must be > 0, got {c.window_s}"),
        (not c.mean_gap_s > 0, f"mean_gap_s must be > 0, got {c.mean_gap_s}"),
        (c.fg_db_range[0] > c.fg_db_range[1], f"fg_db_range must be [low, high], got {list(c.fg_db_range)}"),
        (c.bg_db_range[0] > c.bg_db_range[1], f"bg_db_range must be [low, high], got {list(c.bg_db_range)}"),
        (
            min(c.split_ratio) < 0 or sum(c.split_ratio) < 1,
            f"split_ratio must be counts >= 0, got {list(c.split_ratio)}",
        ),
    ]
    for bad, line in problems:
        if bad:
            raise InputError(line, path)


def _check(d: Distributions, path: Path) -> None:
    lo, hi = d.duration_range_s
    problems = [
        (not 1 <= lo <= hi, f"duration_range_s must be 1 <= low <= high, got {list(d.duration_range_s)}"),
        (not 0 <= d.p_longest <= 1, f"p_longest must be in [0, 1], got {d.p_longest}"),
        (d.length_log_std <= 0, f"length_log_std must be > 0, got {d.length_log_std}"),
        (not 0 < d.max_fill <= 1, f"max_fill must be in (0, 1], got {d.max_fill}"),
        (d.hop_s is not None and d.hop_s < 1, f"hop_s must be >= 1 or null, got {d.hop_s}"),
    ]
    for bad, line in problems:
        if bad:
            raise InputError(line, path)
    _probabilities("queries", d.queries, path)
    _probabilities("windows", d.windows, path)


def _rows(paths: Sequence[Path]) -> list[dict]:
    rows = []
    for path in paths:
        for n, line in enumerate(path.read_text().splitlines(), start=1):
            try:
                row = json.loads(line)
                rows.append({k: row[k] for k in ("vid", "duration", "relevant_windows")})
            except (ValueError, KeyError, TypeError):
                raise InputError("not an annotation line (vid, duration, relevant_windows)", path, n) from None
    return rows


def _length_fit(lengths: np.ndarray) -> tuple[float, float]:
    """Maximum likelihood (mu, sigma) of ``ceil(LogNormal(mu, sigma))`` (at least 1) for whole-second
    lengths: each length l is the interval (l - 1, l] of the continuous draw."""
    from scipy.optimize import minimize
    from scipy.stats import norm

    lengths = lengths.astype(np.float64)
    lower = np.where(lengths > 1, np.log(np.maximum(lengths - 1, 1e-12)), -np.inf)

    def nll(theta: np.ndarray) -> float:
        mu, sigma = theta[0], math.exp(theta[1])
        p = norm.cdf((np.log(lengths) - mu) / sigma) - norm.cdf((lower - mu) / sigma)
        return float(-np.sum(np.log(np.maximum(p, 1e-300))))

    logs = np.log(lengths)
    res = minimize(nll, np.array([logs.mean(), math.log(logs.std() + 1e-3)]), method="Nelder-Mead")
    return float(res.x[0]), float(math.exp(res.x[1]))


def _lengths(rows: Sequence[dict]) -> np.ndarray:
    """Window lengths (s) of annotation rows, the windows within their recording."""
    return np.array([e - s for r in rows for s, e in r["relevant_windows"] if 0 < e - s <= r["duration"]])


def length_summary(paths: Sequence[Path], mu: float, sigma: float) -> str:
    """One comment line: the annotations' window lengths beside those of the fitted model."""
    from scipy.stats import norm

    lengths = _lengths(_rows(paths))
    model = norm.cdf((math.log(3) - mu) / sigma)  # ceil(X) <= 3 exactly when X <= 3
    return (
        f"# window lengths: annotations median {np.median(lengths):g} s, {100 * np.mean(lengths <= 3):.1f} % <= 3 s;"
        f" the fit: median {math.ceil(math.exp(mu))} s, {100 * model:.1f} % <= 3 s"
    )


def fit(paths: Sequence[Path], max_windows: int = 10) -> dict[str, Any]:
    """The distributions of :class:`Distributions` fit to annotation files in the release layout
    (rounded to 3 decimals): recording lengths, queries per recording, windows per query (more than
    ``max_windows`` counted as ``max_windows``), and window lengths (windows within the recording)."""
    rows = _rows(paths)
    if not rows:
        raise InputError("no annotation lines", paths[0] if paths else Path("."))
    duration = {r["vid"]: int(r["duration"]) for r in rows}
    per_rec = Counter(r["vid"] for r in rows)
    wins = Counter(min(max_windows, len(r["relevant_windows"])) for r in rows)
    lo, hi = min(duration.values()), max(duration.values())
    mu, sigma = _length_fit(_lengths(rows))

    def probs(counts: Counter) -> list[float]:
        total = sum(counts.values())
        return [round(counts.get(k, 0) / total, 3) for k in range(1, max(counts) + 1)]

    return {
        "duration_range_s": [lo, hi],
        "p_longest": round(sum(d >= hi - 1 for d in duration.values()) / len(duration), 3),
        "queries": probs(Counter(per_rec.values())),
        "windows": probs(wins),
        "length_log_mean": round(mu, 3),
        "length_log_std": max(0.001, round(sigma, 3)),  # lengths all alike: a valid (narrow) model
    }
