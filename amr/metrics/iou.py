"""Temporal IoU of windows ``[start, end]`` in seconds: one rule for the project's own code, and the
official evaluator's, kept apart where its edge cases differ.

:func:`window_iou` (calibration features and hits), and :func:`pair_iou`, the same for two windows
in plain Python (the per-window loops of ensembles and long-recording merging, where numpy's call
overhead would dominate): windows that do not overlap, or only touch, score 0; two windows of zero
length (an empty union) score 1 when they are the same window and 0 otherwise.

:func:`official_cross_iou` (the official metrics, kept for parity): the same ratio, but an empty
union is 0/0 = NaN (or x/0 = inf), which the official mAP and R1 then count as a match.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _windows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=float)
    return x.reshape(0, 2) if x.size == 0 else x.reshape(-1, x.shape[-1])[:, :2]


def window_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, 2) x (M, 2) windows (extra columns, e.g. scores, ignored) -> (N, M) temporal IoU."""
    a, b = _windows(a), _windows(b)
    inter = np.clip(np.minimum(a[:, None, 1], b[None, :, 1]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    union = (a[:, 1] - a[:, 0])[:, None] + (b[:, 1] - b[:, 0])[None] - inter
    same = (a[:, None, 0] == b[None, :, 0]) & (a[:, None, 1] == b[None, :, 1])
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), same.astype(float))


def pair_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """:func:`window_iou` of two windows ``[start, end, ...]``, value for value."""
    inter = max(min(a[1], b[1]) - max(a[0], b[0]), 0.0)
    union = (a[1] - a[0]) + (b[1] - b[0]) - inter
    if union > 0:
        return inter / union
    return float(a[0] == b[0] and a[1] == b[1])


def official_cross_iou(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """True IoU between every prediction and every GT window. pred: (..., P, 2), gt: (..., G, 2) -> (..., P, G)."""
    a1 = pred[..., :, 1] - pred[..., :, 0]
    a2 = gt[..., :, 1] - gt[..., :, 0]
    left = np.maximum(pred[..., :, None, 0], gt[..., None, :, 0])
    right = np.minimum(pred[..., :, None, 1], gt[..., None, :, 1])
    inter = np.clip(right - left, 0, None)
    union = a1[..., :, None] + a2[..., None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return inter / union
