"""Span conversions and temporal IoU. Spans are (..., 2) tensors, either (center, width) "cxw" or
(start, end) "xx", normalised to [0, 1] by the recording's frame count in training."""

from __future__ import annotations

import torch
from torch import Tensor


def cxw_to_xx(spans: Tensor) -> Tensor:
    """(..., 2) (center, width) -> (..., 2) (start, end)."""
    c, w = spans[..., 0], spans[..., 1]
    return torch.stack([c - 0.5 * w, c + 0.5 * w], dim=-1)


def xx_to_cxw(spans: Tensor) -> Tensor:
    """(..., 2) (start, end) -> (..., 2) (center, width)."""
    return torch.stack([spans.sum(-1) * 0.5, spans[..., 1] - spans[..., 0]], dim=-1)


def temporal_iou(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """IoU and union of every pair. a: (N, 2) xx, b: (M, 2) xx -> (N, M), (N, M)."""
    area_a = a[:, 1] - a[:, 0]
    area_b = b[:, 1] - b[:, 0]
    inter = (torch.min(a[:, None, 1], b[:, 1]) - torch.max(a[:, None, 0], b[:, 0])).clamp(min=0)
    union = area_a[:, None] + area_b - inter
    return inter / union, union


def generalized_temporal_iou(a: Tensor, b: Tensor) -> Tensor:
    """GIoU of every pair, in [-1, 1]. a: (N, 2) xx, b: (M, 2) xx -> (N, M)."""
    a, b = a.float(), b.float()
    iou, union = temporal_iou(a, b)
    hull = (torch.max(a[:, None, 1], b[:, 1]) - torch.min(a[:, None, 0], b[:, 0])).clamp(min=0)
    return iou - (hull - union) / hull


def paired_generalized_temporal_iou(a: Tensor, b: Tensor) -> Tensor:
    """GIoU of a[i] with b[i] (the diagonal of :func:`generalized_temporal_iou`). (N, 2), (N, 2) -> (N,)."""
    a, b = a.float(), b.float()
    inter = (torch.min(a[:, 1], b[:, 1]) - torch.max(a[:, 0], b[:, 0])).clamp(min=0)
    union = (a[:, 1] - a[:, 0]) + (b[:, 1] - b[:, 0]) - inter
    hull = (torch.max(a[:, 1], b[:, 1]) - torch.min(a[:, 0], b[:, 0])).clamp(min=0)
    return inter / union - (hull - union) / hull


def inverse_sigmoid(x: Tensor, eps: float = 1e-3) -> Tensor:
    """logit(x) with x clamped to [0, 1] and both odds terms clamped at ``eps``."""
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))
