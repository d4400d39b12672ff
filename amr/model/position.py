"""Sine position encodings: one over audio frames, one over (center, width) reference spans."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from amr.model.dropout import Dropout


def _interleaved_sine(x: Tensor, num_feats: int, temperature: float) -> Tensor:
    """(...,) positions -> (..., num_feats) as [sin(x/d0), cos(x/d1), sin(x/d2), ...], d_i = T^(2*(i//2)/n)."""
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=x.device)
    dim_t = temperature ** (2 * (dim_t // 2) / num_feats)
    p = x[..., None] / dim_t
    return torch.stack((p[..., 0::2].sin(), p[..., 1::2].cos()), dim=-1).flatten(-2)


class AudioSinePosition(nn.Module):
    """Position of each valid audio frame, normalised to (0, 2*pi] by the number of valid frames."""

    def __init__(self, num_feats: int = 256, temperature: float = 10000.0) -> None:
        super().__init__()
        self.num_feats = num_feats
        self.temperature = temperature

    def forward(self, mask: Tensor) -> Tensor:
        """mask: (B, L) float, 1 = valid -> (B, L, num_feats)."""
        x = mask.cumsum(1, dtype=torch.float32)
        x = x / (x[:, -1:] + 1e-6) * (2 * math.pi)
        return _interleaved_sine(x, self.num_feats, self.temperature)


def span_sine_embedding(spans: Tensor, feats_per_coord: int = 128) -> Tensor:
    """(B, Nq, 2) sigmoid-space (center, width) -> (B, Nq, 2 * feats_per_coord): sine of the center
    followed by sine of the width, each scaled by 2*pi, temperature 10000."""
    scaled = spans * (2 * math.pi)
    center = _interleaved_sine(scaled[..., 0], feats_per_coord, 10000.0)
    width = _interleaved_sine(scaled[..., 1], feats_per_coord, 10000.0)
    return torch.cat([center, width], dim=-1)


class TrainableTextPosition(nn.Module):
    """Learned text position embedding. Built and saved as in the official model, but never used
    (``use_txt_pos`` is off there): it only keeps state dicts and the parameter count identical."""

    def __init__(self, max_len: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.position_embeddings = nn.Embedding(max_len, hidden)
        self.LayerNorm = nn.LayerNorm(hidden)
        self.dropout = Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        """(B, L, hidden) -> (B, L, hidden)."""
        pos = self.position_embeddings(torch.arange(x.shape[1], device=x.device))
        return self.dropout(self.LayerNorm(x + pos[None]))
