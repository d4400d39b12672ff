"""Moment-DETR (Lei et al., 2021) as lighthouse trains it on CLAP audio.

Frames (2 time features first, then the audio frame) and text tokens are projected to
``hidden_dim`` and concatenated into one sequence; a DETR transformer (post-norm self-attention
encoder over [frames ; tokens], decoder of ``num_queries`` learned queries cross-attending to it)
gives the spans and foreground logits; a linear head scores each frame's encoded state.

The transformer runs sequence-first, as DETR's does: (L, B, d) inside, (B, L, d) at its edges.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from amr.model.decoder import MLP, aux_outputs
from amr.model.dropout import Dropout
from amr.model.inputs import InputLayout
from amr.model.position import AudioSinePosition, TrainableTextPosition
from amr.model.projection import input_projection


@dataclass
class MomentDETRConfig:
    """Hyper-parameters; the defaults are lighthouse's for Moment-DETR on CLAP audio."""

    hidden_dim: int = 256
    nheads: int = 8
    enc_layers: int = 2
    dec_layers: int = 2
    dim_feedforward: int = 1024
    dropout: float = 0.1
    input_dropout: float = 0.5
    num_queries: int = 10
    n_input_proj: int = 2
    aud_dim: int = 768  # audio frame size; 2 time features are put before it
    txt_dim: int = 768
    max_q_l: int = 32  # text cut to this many tokens; size of the (unused) learned text position table
    aux_loss: bool = True

    def __post_init__(self) -> None:
        if self.hidden_dim % self.nheads:
            raise ValueError(f"hidden_dim {self.hidden_dim} is not divisible by nheads {self.nheads}")


class EncoderLayer(nn.Module):
    """Post-norm self-attention layer with a ReLU FFN; queries and keys carry the position."""

    def __init__(self, d: int, nhead: int, ffn: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d, nhead, dropout=dropout)
        self.linear1, self.linear2 = nn.Linear(d, ffn), nn.Linear(ffn, d)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.dropout, self.dropout1, self.dropout2 = Dropout(dropout), Dropout(dropout), Dropout(dropout)

    def forward(self, x: Tensor, pos: Tensor, pad: Tensor) -> Tensor:
        """x, pos: (L, B, d); pad: (B, L) bool, True = padding."""
        qk = x + pos
        x = self.norm1(x + self.dropout1(self.self_attn(qk, qk, x, key_padding_mask=pad)[0]))
        return self.norm2(x + self.dropout2(self.linear2(self.dropout(F.relu(self.linear1(x))))))


class DecoderLayer(nn.Module):
    """Post-norm: query self-attention, cross-attention to the memory, ReLU FFN."""

    def __init__(self, d: int, nhead: int, ffn: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d, nhead, dropout=dropout)
        self.multihead_attn = nn.MultiheadAttention(d, nhead, dropout=dropout)
        self.linear1, self.linear2 = nn.Linear(d, ffn), nn.Linear(ffn, d)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.dropout = Dropout(dropout)
        self.dropout1, self.dropout2, self.dropout3 = Dropout(dropout), Dropout(dropout), Dropout(dropout)

    def forward(self, tgt: Tensor, query_pos: Tensor, memory: Tensor, pos: Tensor, pad: Tensor) -> Tensor:
        """tgt, query_pos: (Nq, B, d); memory, pos: (L, B, d); pad: (B, L) bool."""
        q = tgt + query_pos
        tgt = self.norm1(tgt + self.dropout1(self.self_attn(q, q, tgt)[0]))
        cross = self.multihead_attn(tgt + query_pos, memory + pos, memory, key_padding_mask=pad)[0]
        tgt = self.norm2(tgt + self.dropout2(cross))
        return self.norm3(tgt + self.dropout3(self.linear2(self.dropout(F.relu(self.linear1(tgt))))))


class Encoder(nn.Module):
    def __init__(self, layers: list[EncoderLayer]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: Tensor, pos: Tensor, pad: Tensor) -> Tensor:
        """x, pos: (L, B, d); pad: (B, L) bool."""
        for layer in self.layers:
            x = layer(x, pos, pad)
        return x


class Decoder(nn.Module):
    def __init__(self, layer: DecoderLayer, num_layers: int, d: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.norm = nn.LayerNorm(d)

    def forward(self, tgt: Tensor, query_pos: Tensor, memory: Tensor, pos: Tensor, pad: Tensor) -> Tensor:
        """Every layer's output through the shared norm: (L_dec, Nq, B, d)."""
        out = []
        for layer in self.layers:
            tgt = layer(tgt, query_pos, memory, pos, pad)
            out.append(self.norm(tgt))
        return torch.stack(out)


class Transformer(nn.Module):
    """DETR's encoder-decoder; every >1-d parameter gets xavier init."""

    def __init__(self, cfg: MomentDETRConfig) -> None:
        super().__init__()
        d, h, f, p = cfg.hidden_dim, cfg.nheads, cfg.dim_feedforward, cfg.dropout
        self.encoder = Encoder([EncoderLayer(d, h, f, p) for _ in range(cfg.enc_layers)])
        self.decoder = Decoder(DecoderLayer(d, h, f, p), cfg.dec_layers, d)
        for param in self.parameters():
            if param.dim() > 1:
                nn.init.xavier_uniform_(param)

    def forward(self, src: Tensor, pad: Tensor, query: Tensor, pos: Tensor) -> tuple[Tensor, Tensor]:
        """src, pos: (B, L, d); pad: (B, L) bool; query: (Nq, d).
        Returns hs (L_dec, B, Nq, d) and memory (B, L, d)."""
        b = src.shape[0]
        x, pos = src.transpose(0, 1), pos.transpose(0, 1)
        x = self.encoder(x, pos, pad)
        query_pos = query[:, None].repeat(1, b, 1)
        hs = self.decoder(torch.zeros_like(query_pos), query_pos, x, pos, pad)
        return hs.transpose(1, 2), x.transpose(0, 1)


class MomentDETR(nn.Module):
    """See the module docstring."""

    def __init__(self, cfg: MomentDETRConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or MomentDETRConfig()
        self.cfg = cfg
        d = cfg.hidden_dim
        self.transformer = Transformer(cfg)
        self.position_embed = AudioSinePosition(d)
        self.txt_position_embed = TrainableTextPosition(cfg.max_q_l, d, cfg.input_dropout)  # built, unused
        self.span_embed = MLP(d, d, 2, 3)
        self.class_embed = nn.Linear(d, 2)  # index 0 = foreground
        self.query_embed = nn.Embedding(cfg.num_queries, d)
        self.input_txt_proj = input_projection(cfg.txt_dim, d, cfg.n_input_proj, cfg.input_dropout)
        self.input_vid_proj = input_projection(cfg.aud_dim + 2, d, cfg.n_input_proj, cfg.input_dropout)
        self.saliency_proj = nn.Linear(d, 1)

    @property
    def layout(self) -> InputLayout:
        """lighthouse's: time features first, text L2-normalised and cut to ``max_q_l`` tokens."""
        return InputLayout(time_first=True, text_l2=True, max_text=self.cfg.max_q_l)

    def forward(self, src_txt: Tensor, src_txt_mask: Tensor, src_aud: Tensor, src_aud_mask: Tensor) -> dict:
        """
        Args:
            src_txt: (B, Lt, txt_dim) token features; src_txt_mask: (B, Lt) float, 1 = valid.
            src_aud: (B, La, 2 + aud_dim) time features, then L2-normalised frames; src_aud_mask: (B, La).
        Returns:
            pred_logits: (B, Nq, 2); pred_spans: (B, Nq, 2) sigmoid (center, width) normalised by La;
            saliency_scores: (B, La) (padded frames scored too); audio_mask: (B, La);
            aux_outputs: list over earlier decoder layers of {pred_logits, pred_spans}.
        """
        aud = self.input_vid_proj(src_aud)
        txt = self.input_txt_proj(src_txt)
        src = torch.cat([aud, txt], 1)
        pad = torch.cat([src_aud_mask, src_txt_mask], 1) == 0
        pos = torch.cat([self.position_embed(src_aud_mask), torch.zeros_like(txt)], 1)
        hs, memory = self.transformer(src, pad, self.query_embed.weight, pos)
        logits = self.class_embed(hs)  # (L_dec, B, Nq, 2)
        spans = self.span_embed(hs).sigmoid()
        out = {
            "pred_logits": logits[-1],
            "pred_spans": spans[-1],
            "saliency_scores": self.saliency_proj(memory[:, : src_aud.shape[1]]).squeeze(-1),
            "audio_mask": src_aud_mask,
        }
        if self.cfg.aux_loss:
            out["aux_outputs"] = aux_outputs(logits, spans)
        return out
