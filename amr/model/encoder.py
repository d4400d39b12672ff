"""The two encoders of QD-DETR: text-to-audio cross layers, then self-attention layers.

All tensors are batch-first: (B, L, d).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from amr.model.attention import SelfProjectedAttention
from amr.model.dropout import Dropout
from amr.model.prelu import PReLU

T2VMask = Literal["official", "per_sample"]


def t2v_blocked(aud_pad: Tensor, txt_pad: Tensor, nhead: int, mode: T2VMask) -> Tensor:
    """Which text tokens each audio frame may not attend to, per head.

    Official quirk, kept for parity: the baseline builds the (B, La, Lt) mask ``pad_aud x pad_txt``,
    repeats it head-major with ``.repeat(nhead, 1, 1)`` while attention reads it batch-major, so head
    h of sample b uses the mask of sample ``(b * nhead + h) % B``. Valid frames of b can then lose
    valid tokens of b in some heads when another sample has shorter audio and text: a sample's output
    depends on its batch. ``per_sample`` keeps only b's own text padding (batch-invariant).

    Args:
        aud_pad: (B, La) bool, True = padding. txt_pad: (B, Lt) bool, True = padding.
    Returns:
        (B, H, La, Lt) or (B, 1, 1, Lt) bool, True = blocked.
    """
    key_pad = txt_pad[:, None, None, :]
    if mode == "per_sample":
        return key_pad
    b = aud_pad.shape[0]
    src = (torch.arange(b, device=aud_pad.device)[:, None] * nhead + torch.arange(nhead, device=aud_pad.device)) % b
    quirk = aud_pad[src][..., :, None] & txt_pad[src][..., None, :]  # (B, H, La, Lt)
    return quirk | key_pad


class FFN(nn.Module):
    def __init__(self, dim: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.dropout = Dropout(dropout)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.activation = PReLU()  # learnable, one scalar per layer (init 0.25)

    def ffn(self, x: Tensor) -> Tensor:
        return self.linear2(self.dropout(self.activation(self.linear1(x))))


class _EncoderLayer(FFN):
    """Parameters shared by both encoder layer kinds: one attention, two norms, two dropouts."""

    def __init__(self, dim: int, nhead: int, ffn_dim: int, dropout: float) -> None:
        super().__init__(dim, ffn_dim, dropout)
        self.self_attn = SelfProjectedAttention(dim, nhead, dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout1 = Dropout(dropout)
        self.dropout2 = Dropout(dropout)


class TextToAudioLayer(_EncoderLayer):
    """Audio frames attend to text tokens; text passes through unchanged.

    Official quirk, kept for parity: the FFN reads ``norm1(x)`` but its residual adds the un-normalised
    ``x``; only ``norm2`` follows. Values carry no position; text position is zero.
    """

    def forward(self, aud: Tensor, aud_pos: Tensor, txt: Tensor, blocked: Tensor) -> Tensor:
        """aud: (B, La, d), aud_pos: (B, La, d), txt: (B, Lt, d), blocked: (B, H|1, La|1, Lt) -> (B, La, d)."""
        x = aud + self.dropout1(self.self_attn(aud + aud_pos, txt, txt, blocked))
        return self.norm2(x + self.dropout2(self.ffn(self.norm1(x))))


class SelfAttentionLayer(_EncoderLayer):
    """Standard post-norm encoder layer; queries and keys carry the position, values do not."""

    def forward(self, x: Tensor, pos: Tensor, blocked: Tensor) -> Tensor:
        """x, pos: (B, L, d), blocked: (B, 1, 1, L) key padding -> (B, L, d)."""
        qk = x + pos
        x = self.norm1(x + self.dropout1(self.self_attn(qk, qk, x, blocked)))
        return self.norm2(x + self.dropout2(self.ffn(x)))


class LayerStack(nn.Module):
    """``layers`` container so parameter names read ``...layers.N...`` as in the official model."""

    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
