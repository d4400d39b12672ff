"""Confidence intervals and paired tests over test queries and seeds (SciPy).

* One seed: BCa bootstrap interval of the mean over queries (``scipy.stats.bootstrap``).
* Several seeds: a two-level (hierarchical) bootstrap: seeds are resampled with replacement, then
  queries with replacement, and the statistic is the mean over the resampled (seed, query) cells;
  the interval is the percentile one. Both the training noise (seeds) and the test sample (queries)
  widen it.
* Paired comparison of two systems on the same queries: the p-value of a two-sided paired
  permutation test (``scipy.stats.permutation_test``, ``permutation_type="samples"``: each query's
  pair of seed-averaged values is swapped at random) of the mean difference; its interval is the
  bootstrap above applied to the difference (queries resampled jointly, each system's seeds on
  their own).

Every figure is in points (100 x the mean of the per-query values).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Estimate:
    """A mean with its interval, in points."""

    mean: float
    low: float
    high: float


def _weights(rng: np.random.Generator, n: int, n_boot: int) -> np.ndarray:
    """(n_boot, n) counts of each item in a resample of size n with replacement."""
    draws = rng.integers(0, n, (n_boot, n)) + n * np.arange(n_boot)[:, None]
    return np.bincount(draws.ravel(), minlength=n_boot * n).reshape(n_boot, n).astype(float)


def _resampled_means(m: np.ndarray, w_seed: np.ndarray, w_query: np.ndarray) -> np.ndarray:
    """Mean of the resampled cells of m (S, Q) for each pair of weight rows -> (n_boot,)."""
    s, q = m.shape
    return ((w_seed @ m) * w_query).sum(1) / (s * q)


def _percentile(samples: np.ndarray) -> tuple[float, float]:
    a = (1 - CONFIDENCE) / 2
    lo, hi = np.percentile(samples, [100 * a, 100 * (1 - a)])
    return float(lo), float(hi)


def _bca(v: np.ndarray, n_boot: int, rng: np.random.Generator) -> tuple[float, float]:
    if np.ptp(v) == 0:  # every query scored alike: no spread to resample (BCa is undefined)
        return float(v[0]), float(v[0])
    res = stats.bootstrap(
        (v,), np.mean, method="BCa", confidence_level=CONFIDENCE, n_resamples=n_boot, batch=256, rng=rng
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def interval(m: np.ndarray, n_boot: int = 2000, seed: int = 0) -> Estimate:
    """Mean and 95 % interval of a system's per-query values m: (S seeds, Q queries), in points."""
    m = np.asarray(m, dtype=float)
    if m.ndim == 1:
        m = m[None]
    rng = np.random.default_rng(seed)
    if m.shape[1] == 0:
        return Estimate(float("nan"), float("nan"), float("nan"))
    if m.shape[0] == 1:
        lo, hi = _bca(m[0], n_boot, rng)
    else:
        boot = _resampled_means(m, _weights(rng, m.shape[0], n_boot), _weights(rng, m.shape[1], n_boot))
        lo, hi = _percentile(boot)
    return Estimate(100 * float(m.mean()), 100 * lo, 100 * hi)


@dataclass(frozen=True)
class Paired:
    """B - A on the same queries, in points: the difference, its interval and the test's p-value."""

    diff: Estimate
    p_value: float
    n_queries: int


def permutation_p(a: np.ndarray, b: np.ndarray, n_resamples: int = 9999, seed: int = 0) -> float:
    """Two-sided paired permutation test of mean(b - a) = 0; a, b: (Q,) on the same queries.

    Swapping a query's pair flips the sign of its difference, so the test runs on the differences
    (SciPy's one-sample ``samples`` permutations) and leaves out the zero ones, which no flip
    changes: the same null distribution of the mean difference, computed in a fraction of the time
    (and exactly, by enumeration, when at most 13 queries differ).
    """
    d = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    d = d[d != 0]
    if len(d) < 2:  # no difference, or one whose two signs are equally extreme
        return 1.0
    res = stats.permutation_test(
        (d,),
        lambda x, axis: np.sum(x, axis=axis),
        permutation_type="samples",
        vectorized=True,
        n_resamples=n_resamples,
        alternative="two-sided",
        batch=1000,
        rng=np.random.default_rng(seed),
    )
    return float(res.pvalue)


def paired(ma: np.ndarray, mb: np.ndarray, n_boot: int = 2000, n_resamples: int = 9999, seed: int = 0) -> Paired:
    """Compare systems A and B: ma (Sa, Q), mb (Sb, Q) per-query values on the same queries."""
    ma, mb = np.atleast_2d(ma).astype(float), np.atleast_2d(mb).astype(float)
    a, b = ma.mean(0), mb.mean(0)
    p = permutation_p(a, b, n_resamples, seed)
    rng = np.random.default_rng(seed)
    if ma.shape[0] == 1 and mb.shape[0] == 1:
        lo, hi = _bca(b - a, n_boot, rng)
    else:
        w_q = _weights(rng, ma.shape[1], n_boot)
        wa, wb = _weights(rng, ma.shape[0], n_boot), _weights(rng, mb.shape[0], n_boot)
        lo, hi = _percentile(_resampled_means(mb, wb, w_q) - _resampled_means(ma, wa, w_q))
    return Paired(Estimate(100 * float((b - a).mean()), 100 * lo, 100 * hi), p, int(ma.shape[1]))
