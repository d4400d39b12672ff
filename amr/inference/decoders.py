"""Moments from QD-DETR's per-frame saliency: segments above an adaptive threshold, and the exact
posterior of a span under a segmentation model of the frame scores.

Segmentation model (a semi-Markov chain over the T frames of one recording): a segmentation is a
set of non-overlapping segments ``[a, b)`` of at most ``max_len`` frames; every other frame is
background. Its weight is ``exp(sum over segments of (U[a, b) + penalty))``, ``U[a, b)`` the sum of
the frame scores inside; a negative ``penalty`` (a log prior per segment) makes one segment likelier
than the same frames split into adjacent ones. The posterior of a span, ``P([a, b) is a segment)``,
sums the weights of the segmentations holding it over the sum of all weights; forward and backward
sums make it exact in O(T x max_len), computed for a whole batch of recordings at once (a loop over
the T frames, vectorised over recordings and segment lengths).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

from amr.errors import InputError

Rows = list[list[float]]  # ranked [st, ed, score] rows of one query, seconds


def _logsumexp(x: np.ndarray, axis: int = -1) -> np.ndarray:
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        return np.squeeze(m, axis) + np.log(np.sum(np.exp(x - m), axis=axis))


def _pad(curves: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Curves of different lengths -> (B, T) zero-padded float64 scores and (B,) lengths."""
    lengths = np.array([len(c) for c in curves], dtype=int)
    out = np.zeros((len(curves), max(1, int(lengths.max(initial=0)))))
    for i, c in enumerate(curves):
        out[i, : len(c)] = c
    return out, lengths


def _segment_scores(scores: np.ndarray, lengths: np.ndarray, max_len: int, penalty: float) -> np.ndarray:
    """seg[b, t, l - 1] = U_b[t, t + l) + penalty, -inf where the segment leaves recording b. (B, T, L)."""
    b, t = scores.shape
    cum = np.concatenate([np.zeros((b, 1)), np.cumsum(scores, 1)], 1)
    ends = np.arange(t)[:, None] + np.arange(1, max_len + 1)[None, :]  # (T, L)
    seg = cum[:, np.minimum(ends, t)] - cum[:, :t, None] + penalty
    seg[ends[None] > lengths[:, None, None]] = -np.inf
    return seg


def _forward(seg: np.ndarray) -> np.ndarray:
    """alpha[b, e]: log total weight of the segmentations of frames [0, e) of recording b. (B, T + 1).
    A segmentation of [0, e) ends with a background frame or with a segment [e - l, e)."""
    b, t, max_len = seg.shape
    alpha = np.full((b, t + 1), -np.inf)
    alpha[:, 0] = 0.0
    for e in range(1, t + 1):
        starts = e - np.arange(1, min(max_len, e) + 1)
        ends_here = alpha[:, starts] + seg[:, starts, e - starts - 1]
        alpha[:, e] = _logsumexp(np.concatenate([alpha[:, e - 1 : e], ends_here], 1))
    return alpha


def _reverse(scores: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    out = np.zeros_like(scores)
    for i, n in enumerate(lengths):
        out[i, :n] = scores[i, :n][::-1]
    return out


def batch_posteriors(
    curves: Sequence[np.ndarray], spans: Sequence[np.ndarray], max_len: int, penalty: float = 0.0
) -> list[np.ndarray]:
    """For each recording's frame scores (T_b,) and spans ``[a, b)`` (N_b, 2): the posterior that each
    span is one segment (0 for spans longer than ``max_len`` or outside the recording)."""
    if not curves:
        return []
    scores, lengths = _pad([np.asarray(c, dtype=float) for c in curves])
    max_len = max(1, min(max_len, scores.shape[1]))
    # the backward sums are the forward sums of the reversed recording, beta[s] = alpha_rev[T_b - s]:
    # one forward pass over the recordings and their reversals
    both = np.concatenate([scores, _reverse(scores, lengths)])
    alphas = _forward(_segment_scores(both, np.concatenate([lengths, lengths]), max_len, penalty))
    alpha, alpha_rev = alphas[: len(curves)], alphas[len(curves) :]
    cum = np.concatenate([np.zeros((len(curves), 1)), np.cumsum(scores, 1)], 1)
    out = []
    for i, sp in enumerate(spans):
        n = int(lengths[i])
        a, e = np.asarray(sp, dtype=int).reshape(-1, 2).T
        ok = (a >= 0) & (a < e) & (e <= n) & (e - a <= max_len)
        a, e = np.where(ok, a, 0), np.where(ok, e, 1)
        log_p = alpha[i, a] + cum[i, e] - cum[i, a] + penalty + alpha_rev[i, n - e] - alpha[i, n]
        out.append(np.where(ok, np.exp(np.minimum(log_p, 0.0)), 0.0))
    return out


def forward_backward(scores: np.ndarray, max_len: int, penalty: float = 0.0) -> tuple[np.ndarray, np.ndarray, float]:
    """Log forward and backward sums of the segmentation model over one recording's frame scores (T,).

    Returns:
        alpha (T + 1,): log total weight of the segmentations of frames [0, t);
        beta (T + 1,): log total weight of the segmentations of frames [t, T);
        log Z = alpha[T] = beta[0].
    """
    s = np.asarray(scores, dtype=float)[None]
    n = np.array([s.shape[1]])
    max_len = max(1, min(max_len, s.shape[1]))
    alpha = _forward(_segment_scores(s, n, max_len, penalty))[0]
    beta = _forward(_segment_scores(_reverse(s, n), n, max_len, penalty))[0][::-1]
    return alpha, beta, float(alpha[-1])


def span_posterior(scores: np.ndarray, spans: np.ndarray, max_len: int, penalty: float = 0.0) -> np.ndarray:
    """Posterior probability that each span ``[a, b)`` (frame indices, (N, 2)) is one segment;
    0 for spans longer than ``max_len`` or outside the recording."""
    return batch_posteriors([np.asarray(scores, dtype=float)], [np.asarray(spans)], max_len, penalty)[0]


def threshold_segments(curve: np.ndarray, k: float = 0.5, min_len: int = 1) -> np.ndarray:
    """Maximal runs of frames whose score is at least ``mean + k * std`` of the curve (the adaptive
    threshold), each at least ``min_len`` frames: (N, 2) ``[a, b)`` frame indices in time order."""
    curve = np.asarray(curve, dtype=float)
    if curve.size == 0:
        return np.zeros((0, 2), dtype=int)
    above = curve >= curve.mean() + k * curve.std()
    edges = np.diff(np.concatenate([[0], above.astype(int), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    keep = ends - starts >= min_len
    return np.stack([starts[keep], ends[keep]], 1)


# each decoder and the settings it reads (a changed setting another decoder reads is refused)
DECODERS: dict[str, tuple[str, ...]] = {
    "detr": (),
    "saliency": ("threshold_k", "min_len"),
    "segmental": ("threshold_k", "min_len", "max_len", "penalty"),
    "hybrid": ("threshold_k", "max_len", "penalty", "detr_weight"),
}


@dataclass
class DecodeConfig:
    """How moments are formed from the network's outputs; ``detr`` is the official decoding."""

    name: str = "detr"  # detr | saliency | segmental | hybrid
    threshold_k: float = 0.0  # segments above mean + k * std of the curve; segmental: frame scores z - k
    min_len: int = 1  # saliency: shortest segment, frames
    max_len: int = 60  # segmental: longest segment, frames
    penalty: float = -4.0  # segmental: log prior per segment
    detr_weight: float = 0.5  # hybrid: weight of the DETR score beside the segmental posterior

    def check(self) -> None:
        """Raises ValueError naming the key: an unknown decoder, a value out of range, or a setting
        the chosen decoder would ignore."""
        if self.name not in DECODERS:
            raise ValueError(f"decode.name must be one of {list(DECODERS)}, got {self.name!r}")
        for key in ("threshold_k", "penalty", "detr_weight"):
            if not math.isfinite(getattr(self, key)):
                raise ValueError(f"decode.{key} must be a finite number, got {getattr(self, key)}")
        if self.min_len < 1 or self.max_len < 1:
            raise ValueError(f"decode.min_len and decode.max_len must be >= 1, got {self.min_len}, {self.max_len}")
        if {"min_len", "max_len"} <= set(DECODERS.get(self.name, ())) and self.min_len > self.max_len:
            raise ValueError(f"decode.min_len {self.min_len} exceeds decode.max_len {self.max_len}")
        if not 0.0 <= self.detr_weight <= 1.0:
            raise ValueError(f"decode.detr_weight must be in [0, 1], got {self.detr_weight}")
        default = DecodeConfig()
        for key in ("threshold_k", "min_len", "max_len", "penalty", "detr_weight"):
            if getattr(self, key) != getattr(default, key) and key not in DECODERS[self.name]:
                raise ValueError(f"decode.{key} is not read by decode={self.name}")


def frame_potentials(curve: np.ndarray, k: float) -> np.ndarray:
    """The segmentation model's frame scores: the saliency standardised over the recording, minus
    ``k`` (so a frame above the adaptive threshold mean + k * std favours a segment). QD-DETR's
    saliency is trained with ranking losses, which fix neither its offset nor its scale; the
    posterior must not depend on either."""
    curve = np.asarray(curve, dtype=float)
    std = curve.std()
    return (curve - curve.mean()) / (std if std > 0 else 1.0) - k


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def to_frames(windows: np.ndarray, t: int, duration: float) -> np.ndarray:
    """Windows in seconds (N, >=2) -> ``[a, b)`` frame spans of a T-frame recording (at least one
    frame each), (N, 2)."""
    xx = np.asarray(windows, dtype=float).reshape(len(windows), -1)[:, :2] * t / duration
    a = np.clip(np.floor(xx[:, 0]), 0, t - 1)
    b = np.clip(np.maximum(np.ceil(xx[:, 1]), a + 1), 1, t)
    return np.stack([a, b], 1).astype(int)


def _candidates(
    detr_rows: Rows, curve: np.ndarray, duration: float, cfg: DecodeConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One query's candidate windows (N, 2) in seconds, their frame spans (N, 2), and the scores the
    decoder starts from (N,): the saliency segments' sigmoid of mean score, else DETR's."""
    t, step = len(curve), duration / len(curve)
    detr = np.asarray(detr_rows, dtype=float).reshape(-1, 3)
    if cfg.name == "hybrid":
        return detr[:, :2], to_frames(detr, t, duration), detr[:, 2]
    segs = threshold_segments(curve, cfg.threshold_k, cfg.min_len)
    cum = np.concatenate([[0.0], np.cumsum(curve)])
    seg_scores = _sigmoid((cum[segs[:, 1]] - cum[segs[:, 0]]) / np.maximum(segs[:, 1] - segs[:, 0], 1))
    if cfg.name == "saliency":
        return segs * step, segs, seg_scores
    spans = to_frames(detr, t, duration)  # segmental: DETR's windows, then the segments none covers exactly
    new = [k for k, seg in enumerate(segs.tolist()) if seg not in spans.tolist()]
    windows = np.concatenate([detr[:, :2], segs[new] * step])
    return windows, np.concatenate([spans, segs[new]]), np.concatenate([detr[:, 2], seg_scores[new]])


def decode_batch(
    detr_rows: Sequence[Rows],
    curves: Sequence[np.ndarray],
    durations: Sequence[float],
    cfg: DecodeConfig,
    top: int = 10,
) -> list[Rows]:
    """Each query's ranked ``[st, ed, score]`` rows under ``cfg``. detr_rows: the official rows
    (seconds, best first); curves: the saliency of each query's valid frames (T_b,).

    ``saliency``: the threshold segments, scored by the sigmoid of their mean score; ``segmental``:
    DETR's windows and the threshold segments, scored by their segmentation posterior over the
    :func:`frame_potentials`; ``hybrid``:
    DETR's windows, scored ``w * DETR score + (1 - w) * posterior``. DETR's windows keep their
    seconds; a segment's are its frames x duration / T. A query without frames, or (``saliency``)
    without a segment, keeps DETR's rows."""
    if cfg.name == "detr":
        return [list(r) for r in detr_rows]
    out: list[Rows] = [list(r) for r in detr_rows]
    todo, cands = [], []
    for i, curve in enumerate(curves):
        cand = _candidates(detr_rows[i], np.asarray(curve, dtype=float), durations[i], cfg) if len(curve) else None
        if cand is not None and len(cand[0]):  # no segment above the threshold: DETR's rows stay
            todo.append(i)
            cands.append(cand)
    scores = [c[2] for c in cands]
    if cfg.name != "saliency":
        potentials = [frame_potentials(curves[i], cfg.threshold_k) for i in todo]
        post = batch_posteriors(potentials, [c[1] for c in cands], cfg.max_len, cfg.penalty)
        w = cfg.detr_weight if cfg.name == "hybrid" else 0.0
        scores = [w * s + (1 - w) * p for s, p in zip(scores, post, strict=True)]
    for i, (windows, _, _), sc in zip(todo, cands, scores, strict=True):
        order = np.argsort(-sc, kind="stable")[:top]
        ranked = np.concatenate([windows[order], np.round(sc[order], 4)[:, None]], 1)
        out[i] = ranked.tolist()
    return out


def decode_sample(detr_rows: Rows, saliency: np.ndarray, duration: float, cfg: DecodeConfig, top: int = 10) -> Rows:
    """One query's rows under ``cfg`` (:func:`decode_batch` of one)."""
    return decode_batch([detr_rows], [np.asarray(saliency)], [duration], cfg, top)[0]


def _setting_value(key: str, text: str, where: str) -> Any:
    kinds = {f.name: type(getattr(DecodeConfig(), f.name)) for f in fields(DecodeConfig) if f.name != "name"}
    if key not in kinds:
        raise InputError(f"unknown decode setting {key!r} (one of {', '.join(kinds)})", where)
    try:
        return kinds[key](text)
    except ValueError:
        raise InputError(f"decode.{key} needs a {kinds[key].__name__}, got {text!r}", where) from None


def _pairs(items: Sequence[str] | None, where: str) -> list[tuple[str, str]]:
    out = []
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not text:
            raise InputError(f"expected KEY=VALUE, got {item!r}", where)
        out.append((key.removeprefix("decode."), text))
    return out


def parse_decode(name: str | None, settings: Sequence[str] | None) -> DecodeConfig | None:
    """``--decode NAME --set KEY=VALUE ...`` as a checked config (None: no decoder named)."""
    if name is None:
        if settings:
            raise InputError("--set needs --decode NAME", "--set")
        return None
    cfg = replace(DecodeConfig(name), **{k: _setting_value(k, v, "--set") for k, v in _pairs(settings, "--set")})
    try:
        cfg.check()
    except ValueError as e:
        raise InputError(str(e), "--decode") from None
    return cfg


def parse_choices(items: Sequence[str] | None) -> dict[str, list[Any]]:
    """``--choose KEY=V1,V2,...`` as the values of each setting to choose from."""
    return {k: [_setting_value(k, v, "--choose") for v in text.split(",")] for k, text in _pairs(items, "--choose")}
