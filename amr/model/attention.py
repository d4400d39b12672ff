"""Multi-head attention on batch-first tensors, computed with fused scaled-dot-product attention.

Two flavours keep the official parameter names so official state dicts load unchanged:

* :class:`SelfProjectedAttention` owns packed input projections (``in_proj_weight``/``in_proj_bias``)
  and ``out_proj`` exactly like ``torch.nn.MultiheadAttention`` (used by both encoders).
* :class:`PreProjectedAttention` has no input projections, only ``out_proj``: the decoder layer
  projects queries/keys/values itself (DAB/Conditional-DETR style). Its query/key width may differ
  from the value width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from amr.model.dropout import dropout as fast_dropout


def _heads(x: Tensor, nhead: int) -> Tensor:
    """(B, L, H*D) -> (B, H, L, D)."""
    b, n, c = x.shape
    return x.view(b, n, nhead, c // nhead).transpose(1, 2)


def attend(q: Tensor, k: Tensor, v: Tensor, nhead: int, blocked: Tensor | None, dropout: float) -> Tensor:
    """Scaled dot-product attention over heads.

    Args:
        q: (B, Lq, H*Dk); k: (B, Lk, H*Dk); v: (B, Lk, H*Dv).
        blocked: bool, True = may not attend; broadcastable to (B, H, Lq, Lk).
    Returns:
        (B, Lq, H*Dv).
    """
    qh, kh, vh = _heads(q, nhead), _heads(k, nhead), _heads(v, nhead)
    if dropout > 0.0 and qh.device.type == "cpu" and qh.dtype == torch.float32 and not torch.compiler.is_compiling():
        # CPU training: the fused kernel has no dropout and its fallback draws with bernoulli_;
        # the same computation with the cheaper dropout draw of amr.model.dropout
        b, h, lq, dk = qh.shape
        lk = kh.shape[2]
        if blocked is None:
            bias = qh.new_zeros(1, 1, 1)
        else:  # -inf where blocked, added inside the product (baddbmm)
            bias = torch.zeros(blocked.shape, dtype=qh.dtype).masked_fill(blocked, float("-inf"))
            bias = bias.expand(b, h, *bias.shape[2:]).reshape(b * h, *bias.shape[2:])
        scores = torch.baddbmm(
            bias, qh.reshape(b * h, lq, dk), kh.reshape(b * h, lk, dk).transpose(1, 2), alpha=dk**-0.5
        )
        attn = fast_dropout(scores.softmax(-1), dropout, True)
        out = torch.bmm(attn, vh.reshape(b * h, lk, -1)).view(b, h, lq, -1)
    else:
        mask = None if blocked is None else ~blocked
        out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, dropout_p=dropout)
    b, _, lq, _ = out.shape
    return out.transpose(1, 2).reshape(b, lq, -1)


class SelfProjectedAttention(nn.Module):
    """Attention with its own packed q/k/v projections (``nn.MultiheadAttention`` parameter layout)."""

    def __init__(self, dim: int, nhead: int, dropout: float) -> None:
        super().__init__()
        self.nhead = nhead
        self.dropout = dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, blocked: Tensor | None) -> Tensor:
        """q: (B, Lq, d), k/v: (B, Lk, d), blocked: broadcastable to (B, H, Lq, Lk) -> (B, Lq, d)."""
        wq, wk, wv = self.in_proj_weight.chunk(3)
        bq, bk, bv = self.in_proj_bias.chunk(3)
        p = self.dropout if self.training else 0.0
        out = attend(F.linear(q, wq, bq), F.linear(k, wk, bk), F.linear(v, wv, bv), self.nhead, blocked, p)
        return self.out_proj(out)


class PreProjectedAttention(nn.Module):
    """Attention over already projected inputs; only the output projection is learned."""

    def __init__(self, value_dim: int, nhead: int, dropout: float) -> None:
        super().__init__()
        self.nhead = nhead
        self.dropout = dropout
        self.out_proj = nn.Linear(value_dim, value_dim)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, blocked: Tensor | None) -> Tensor:
        """q/k: (B, L, H*Dk), v: (B, Lk, H*Dv) -> (B, Lq, H*Dv). Scale is 1/sqrt(Dk)."""
        p = self.dropout if self.training else 0.0
        return self.out_proj(attend(q, k, v, self.nhead, blocked, p))
