"""Moments from QD-DETR's per-frame saliency: segments above an adaptive threshold, and the exact
posterior of a span under a segmentation model of the frame scores.

Segmentation model (a semi-Markov chain over the T frames of one recording): a segmentation is a
set of non-overlapping segments ``[a, b)`` of at most ``max_len`` frames; every other frame is
background. Its weight is ``exp(sum over segments of (U[a, b) + penalty))``, ``U[a, b)`` the sum of
the frame scores inside; a negative ``penalty`` (a log prior per segment) makes one segment likelier
than the same frames split into adjacent ones. The posterior of a span, ``P([a, b) is a segment)``,
sums the weights of the segmentations holding it over the sum of all weights; forward and backward
sums make it exact in O(T x max_len).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _logsumexp(x: np.ndarray, axis: int = -1) -> np.ndarray:
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    return np.squeeze(m, axis) + np.log(np.sum(np.exp(x - m), axis=axis))


def _segment_scores(scores: np.ndarray, max_len: int, penalty: float) -> np.ndarray:
    """seg[t, l - 1] = U[t, t + l) + penalty, -inf where the segment would leave the recording. (T, L)."""
    t = len(scores)
    cum = np.concatenate([[0.0], np.cumsum(scores)])
    starts = np.arange(t)[:, None]
    lengths = np.arange(1, max_len + 1)[None, :]
    ends = starts + lengths
    seg = np.full((t, max_len), -np.inf)
    ok = ends <= t
    seg[ok] = (cum[np.minimum(ends, t)] - cum[starts])[ok] + penalty
    return seg


def forward_backward(scores: np.ndarray, max_len: int, penalty: float = 0.0) -> tuple[np.ndarray, np.ndarray, float]:
    """Log forward and backward sums of the segmentation model over frame scores (T,).

    Returns:
        alpha (T + 1,): log total weight of the segmentations of frames [0, t);
        beta (T + 1,): log total weight of the segmentations of frames [t, T);
        log Z = alpha[T] = beta[0].
    """
    t = len(scores)
    seg = _segment_scores(np.asarray(scores, dtype=float), max_len, penalty)
    alpha = np.full(t + 1, -np.inf)
    beta = np.full(t + 1, -np.inf)
    alpha[0], beta[t] = 0.0, 0.0
    for e in range(1, t + 1):  # a segmentation of [0, e) ends with a background frame or a segment
        ls = np.arange(1, min(max_len, e) + 1)
        alpha[e] = _logsumexp(np.concatenate([[alpha[e - 1]], alpha[e - ls] + seg[e - ls, ls - 1]]))
    for s in range(t - 1, -1, -1):  # ... and one of [s, T) starts with either
        ls = np.arange(1, min(max_len, t - s) + 1)
        beta[s] = _logsumexp(np.concatenate([[beta[s + 1]], seg[s, ls - 1] + beta[s + ls]]))
    return alpha, beta, float(alpha[t])


def span_posterior(scores: np.ndarray, spans: np.ndarray, max_len: int, penalty: float = 0.0) -> np.ndarray:
    """Posterior probability that each span ``[a, b)`` (frame indices, (N, 2)) is one segment;
    0 for spans longer than ``max_len`` or outside the recording."""
    scores = np.asarray(scores, dtype=float)
    alpha, beta, log_z = forward_backward(scores, max_len, penalty)
    cum = np.concatenate([[0.0], np.cumsum(scores)])
    out = np.zeros(len(spans))
    for i, (a, b) in enumerate(np.asarray(spans, dtype=int).reshape(-1, 2)):
        if 0 <= a < b <= len(scores) and b - a <= max_len:
            out[i] = np.exp(alpha[a] + cum[b] - cum[a] + penalty + beta[b] - log_z)
    return out


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
    "hybrid": ("max_len", "penalty", "detr_weight"),
}


@dataclass
class DecodeConfig:
    """How moments are formed from the network's outputs; ``detr`` is the official decoding."""

    name: str = "detr"  # detr | saliency | segmental | hybrid
    threshold_k: float = 0.5  # saliency: segments above mean + k * std of the curve
    min_len: int = 1  # saliency: shortest segment, frames
    max_len: int = 60  # segmental: longest segment, frames
    penalty: float = -4.0  # segmental: log prior per segment
    detr_weight: float = 0.5  # hybrid: weight of the DETR score beside the segmental posterior

    def check(self) -> None:
        """Raises ValueError naming the key: an unknown decoder, a value out of range, or a setting
        the chosen decoder would ignore."""
        if self.name not in DECODERS:
            raise ValueError(f"decode.name must be one of {list(DECODERS)}, got {self.name!r}")
        if self.min_len < 1 or self.max_len < 1:
            raise ValueError(f"decode.min_len and decode.max_len must be >= 1, got {self.min_len}, {self.max_len}")
        if not 0.0 <= self.detr_weight <= 1.0:
            raise ValueError(f"decode.detr_weight must be in [0, 1], got {self.detr_weight}")
        default = DecodeConfig()
        for key in ("threshold_k", "min_len", "max_len", "penalty", "detr_weight"):
            if getattr(self, key) != getattr(default, key) and key not in DECODERS[self.name]:
                raise ValueError(f"decode.{key} is not read by decode={self.name}")


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _to_frames(rows: list[list[float]], t: int, duration: float) -> np.ndarray:
    """DETR windows in seconds -> ``[a, b)`` frame spans (at least one frame), (N, 2)."""
    xx = np.asarray(rows, dtype=float).reshape(-1, 3)[:, :2] * t / duration
    a = np.clip(np.floor(xx[:, 0]), 0, t - 1)
    b = np.clip(np.maximum(np.ceil(xx[:, 1]), a + 1), 1, t)
    return np.stack([a, b], 1).astype(int)


def decode_sample(
    detr_rows: list[list[float]], saliency: np.ndarray, duration: float, cfg: DecodeConfig, top: int = 10
) -> list[list[float]]:
    """One sample's ranked ``[st, ed, score]`` rows under ``cfg``. detr_rows: the official rows
    (seconds, best first); saliency: (T,) the valid frames' scores.

    ``saliency``: the threshold segments, scored by the sigmoid of their mean score; ``segmental``:
    DETR's windows and the threshold segments, scored by their segmentation posterior; ``hybrid``:
    DETR's windows, scored ``w * DETR score + (1 - w) * posterior``. DETR's windows keep their
    seconds; a segment's are its frames x duration / T."""
    if cfg.name == "detr" or len(saliency) == 0:
        return detr_rows
    t, step = len(saliency), duration / len(saliency)
    segs = threshold_segments(saliency, cfg.threshold_k, cfg.min_len)
    detr = np.asarray(detr_rows, dtype=float).reshape(-1, 3)
    if cfg.name == "saliency":
        windows, spans = segs * step, segs
        scores = np.array([_sigmoid(saliency[a:b].mean()) for a, b in segs])
    else:
        windows, spans = detr[:, :2], _to_frames(detr_rows, t, duration)
        if cfg.name == "segmental":  # DETR's windows, then the segments no DETR window covers exactly
            new = [k for k, seg in enumerate(segs.tolist()) if seg not in spans.tolist()]
            windows = np.concatenate([windows, segs[new] * step])
            spans = np.concatenate([spans, segs[new]])
        scores = span_posterior(saliency, spans, cfg.max_len, cfg.penalty)
        if cfg.name == "hybrid":
            scores = cfg.detr_weight * detr[:, 2] + (1 - cfg.detr_weight) * scores
    order = np.argsort(-scores, kind="stable")[:top]
    return [[float(windows[i, 0]), float(windows[i, 1]), round(float(scores[i]), 4)] for i in order]
