"""DAB-style conditional decoder of QD-DETR: queries are learned (center, width) anchors refined
layer by layer. Batch-first tensors: queries (B, Nq, d), memory (B, La, d)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from amr.model.attention import PreProjectedAttention
from amr.model.dropout import Dropout
from amr.model.encoder import FFN
from amr.model.position import span_sine_embedding
from amr.model.span_ops import inverse_sigmoid


class MLP(nn.Module):
    """``num_layers`` Linear layers with ReLU between them."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [in_dim] + [hidden] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims, dims[1:] + [out_dim], strict=True))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


def aux_outputs(logits: Tensor, spans: Tensor) -> list[dict[str, Tensor]]:
    """The outputs of every decoder layer but the last: (L, B, Nq, 2) each -> L - 1 dicts."""
    return [{"pred_logits": lg, "pred_spans": sp} for lg, sp in zip(logits[:-1], spans[:-1], strict=True)]


class DecoderLayer(FFN):
    """Self-attention among queries, then cross-attention to audio memory, then FFN (post-norm).

    In cross-attention each head's query is [content (d/H) ; projected sine of the anchor (d/H)] and
    each head's key is [content ; projected audio position], so q/k are 2d wide and the scale is
    1/sqrt(2d/H). Only the first layer adds the query position to the content (``ca_qpos_proj``);
    later layers have none (as the official decoder builds it).
    """

    def __init__(self, dim: int, nhead: int, ffn_dim: int, dropout: float, first: bool) -> None:
        super().__init__(dim, ffn_dim, dropout)
        self.nhead = nhead
        self.sa_qcontent_proj = nn.Linear(dim, dim)
        self.sa_qpos_proj = nn.Linear(dim, dim)
        self.sa_kcontent_proj = nn.Linear(dim, dim)
        self.sa_kpos_proj = nn.Linear(dim, dim)
        self.sa_v_proj = nn.Linear(dim, dim)
        self.self_attn = PreProjectedAttention(dim, nhead, dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.dropout1 = Dropout(dropout)

        self.ca_qcontent_proj = nn.Linear(dim, dim)
        self.ca_qpos_proj = nn.Linear(dim, dim) if first else None
        self.ca_kcontent_proj = nn.Linear(dim, dim)
        self.ca_kpos_proj = nn.Linear(dim, dim)
        self.ca_v_proj = nn.Linear(dim, dim)
        self.ca_qpos_sine_proj = nn.Linear(dim, dim)
        self.cross_attn = PreProjectedAttention(dim, nhead, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.dropout2 = Dropout(dropout)
        self.dropout3 = Dropout(dropout)

    def _interleave(self, content: Tensor, position: Tensor) -> Tensor:
        """(B, L, d), (B, L, d) -> (B, L, 2d) with each head's content and position side by side."""
        b, n, d = content.shape
        h = self.nhead
        return torch.cat([content.view(b, n, h, d // h), position.view(b, n, h, d // h)], -1).view(b, n, 2 * d)

    def forward(
        self, tgt: Tensor, memory: Tensor, mem_pos: Tensor, mem_blocked: Tensor, query_pos: Tensor, query_sine: Tensor
    ) -> Tensor:
        """tgt, query_pos, query_sine: (B, Nq, d); memory, mem_pos: (B, La, d);
        mem_blocked: (B, 1, 1, La) bool -> (B, Nq, d)."""
        q = self.sa_qcontent_proj(tgt) + self.sa_qpos_proj(query_pos)
        k = self.sa_kcontent_proj(tgt) + self.sa_kpos_proj(query_pos)
        tgt = self.norm1(tgt + self.dropout1(self.self_attn(q, k, self.sa_v_proj(tgt), None)))

        q = self.ca_qcontent_proj(tgt)
        k = self.ca_kcontent_proj(memory)
        k_pos = self.ca_kpos_proj(mem_pos)
        if self.ca_qpos_proj is not None:
            q = q + self.ca_qpos_proj(query_pos)
            k = k + k_pos
        q = self._interleave(q, self.ca_qpos_sine_proj(query_sine))
        k = self._interleave(k, k_pos)
        tgt = self.norm2(tgt + self.dropout2(self.cross_attn(q, k, self.ca_v_proj(memory), mem_blocked)))
        return self.norm3(tgt + self.dropout3(self.ffn(tgt)))


class Decoder(nn.Module):
    """Anchor-refining decoder.

    For each layer: sine-embed the current anchors, derive the query position (``ref_point_head``),
    scale the sine embedding by ``query_scale(tgt)`` (identity in layer 0) and by the modulated width
    ``sigmoid(ref_anchor_head(tgt)) / anchor_width``, run the layer, then refine the anchors with the
    shared ``bbox_embed`` (gradients stopped between layers).
    """

    def __init__(self, dim: int, nhead: int, ffn_dim: int, dropout: float, num_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(dim, nhead, ffn_dim, dropout, first=i == 0) for i in range(num_layers))
        self.norm = nn.LayerNorm(dim)
        self.query_scale = MLP(dim, dim, dim, 2)
        self.ref_point_head = MLP(dim, dim, dim, 2)
        self.bbox_embed = MLP(dim, dim, 2, 3)
        self.ref_anchor_head = MLP(dim, dim, 1, 2)
        last = self.bbox_embed.layers[-1]
        assert isinstance(last, nn.Linear)
        nn.init.zeros_(last.weight)  # overwritten by the transformer's xavier init (official)
        nn.init.zeros_(last.bias)

    def forward(self, memory: Tensor, mem_pos: Tensor, mem_blocked: Tensor, anchors: Tensor) -> tuple[Tensor, Tensor]:
        """memory, mem_pos: (B, La, d); mem_blocked: (B, 1, 1, La); anchors: (B, Nq, 2) sigmoid space.

        Returns:
            hs: (L, B, Nq, d) normalised output of every layer;
            refs: (L, B, Nq, 2) the anchor each layer's output is relative to.
        """
        b, nq, _ = anchors.shape
        tgt = memory.new_zeros(b, nq, memory.shape[-1])
        ref = anchors
        hs, refs = [], [anchors]
        for i, layer in enumerate(self.layers):
            sine = span_sine_embedding(ref, tgt.shape[-1] // 2)
            query_pos = self.ref_point_head(sine)
            if i > 0:
                sine = sine * self.query_scale(tgt)
            sine = sine * (self.ref_anchor_head(tgt).sigmoid()[..., 0] / ref[..., 1]).unsqueeze(-1)
            tgt = layer(tgt, memory, mem_pos, mem_blocked, query_pos, sine)
            new_ref = (self.bbox_embed(tgt) + inverse_sigmoid(ref)).sigmoid()
            if i < len(self.layers) - 1:
                refs.append(new_ref)
            ref = new_ref.detach()
            hs.append(self.norm(tgt))
        return torch.stack(hs), torch.stack(refs)
