"""QD-DETR ("AM-DETR"), the official DCASE 2026 Task 6 baseline network, unchanged.

Audio CLAP frames (+2 time features) and text tokens are projected to ``hidden_dim``; audio attends
to text (T2V encoder), a learned global token is prepended and a self-attention encoder runs over
[global ; audio]; a DAB-style decoder turns ``num_queries`` learned anchors into spans and
foreground logits; a saliency head scores every frame against the global token.

The saliency contrast needs a second pass with each sample's text replaced by the next sample's
("rolled" text). Both passes run as one encoder call over a 2B batch; the decoder runs on the
positive half only, since the negative pass's decoder output is never used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor, nn

from amr.model.decoder import MLP, Decoder, aux_outputs
from amr.model.encoder import LayerStack, SelfAttentionLayer, T2VMask, TextToAudioLayer, t2v_blocked
from amr.model.inputs import OFFICIAL
from amr.model.position import AudioSinePosition, TrainableTextPosition
from amr.model.projection import input_projection
from amr.model.span_ops import inverse_sigmoid


@dataclass
class QDDETRConfig:
    """Hyper-parameters; the defaults are the official ``config.yml`` values."""

    hidden_dim: int = 256
    nheads: int = 8
    enc_layers: int = 2  # used for the T2V encoder and for the self-attention encoder
    dec_layers: int = 2
    dim_feedforward: int = 1024
    dropout: float = 0.1
    input_dropout: float = 0.5
    num_queries: int = 10
    n_input_proj: int = 2
    aud_dim: int = 768  # CLAP frame size; 2 time features are appended by the data layer
    txt_dim: int = 768
    max_q_l: int = 32  # size of the (unused) learned text position table
    aux_loss: bool = True
    t2v_mask: str = "official"  # official | per_sample, see :func:`amr.model.encoder.t2v_blocked`

    def __post_init__(self) -> None:
        if self.t2v_mask not in ("official", "per_sample"):
            raise ValueError(f"t2v_mask must be 'official' or 'per_sample', got {self.t2v_mask!r}")
        if self.hidden_dim % self.nheads:
            raise ValueError(f"hidden_dim {self.hidden_dim} is not divisible by nheads {self.nheads}")
        if not 1 <= self.n_input_proj <= 3:
            raise ValueError(f"n_input_proj must be 1, 2 or 3, got {self.n_input_proj}")


def _projection(in_dim: int, cfg: QDDETRConfig) -> nn.Sequential:
    return input_projection(in_dim, cfg.hidden_dim, cfg.n_input_proj, cfg.input_dropout)


class Transformer(nn.Module):
    """T2V encoder, self-attention encoder and decoder. Every >1-d parameter inside gets xavier init
    (this overwrites the decoder's zero-initialised ``bbox_embed`` weight, as the official code does)."""

    def __init__(self, cfg: QDDETRConfig) -> None:
        super().__init__()
        d, h, f, p = cfg.hidden_dim, cfg.nheads, cfg.dim_feedforward, cfg.dropout
        self.nhead = h
        self.t2v_encoder = LayerStack([TextToAudioLayer(d, h, f, p) for _ in range(cfg.enc_layers)])
        self.encoder = LayerStack([SelfAttentionLayer(d, h, f, p) for _ in range(cfg.enc_layers)])
        self.decoder = Decoder(d, h, f, p, cfg.dec_layers)
        for param in self.parameters():
            if param.dim() > 1:
                nn.init.xavier_uniform_(param)

    def encode(
        self,
        aud: Tensor,
        aud_pos: Tensor,
        aud_pad: Tensor,
        txt: Tensor,
        t2v_blocked: Tensor,
        glob: Tensor,
        glob_pos: Tensor,
    ) -> Tensor:
        """aud, aud_pos: (B, La, d); aud_pad: (B, La) bool; txt: (B, Lt, d); t2v_blocked: see
        :func:`t2v_blocked`; glob, glob_pos: (d,). Returns memory (B, 1 + La, d), global token first."""
        for layer in self.t2v_encoder.layers:
            aud = layer(aud, aud_pos, txt, t2v_blocked)
        b = aud.shape[0]
        x = torch.cat([glob.expand(b, 1, -1), aud], 1)
        pos = torch.cat([glob_pos.expand(b, 1, -1), aud_pos], 1)
        blocked = torch.cat([aud_pad.new_zeros(b, 1), aud_pad], 1)[:, None, None, :]
        for layer in self.encoder.layers:
            x = layer(x, pos, blocked)
        return x


class QDDETR(nn.Module):
    """The baseline retriever. See the module docstring."""

    layout = OFFICIAL  # the official batch as it is

    def __init__(self, cfg: QDDETRConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or QDDETRConfig()
        self.cfg = cfg
        d = cfg.hidden_dim
        self.transformer = Transformer(cfg)
        self.position_embed = AudioSinePosition(d)
        self.txt_position_embed = TrainableTextPosition(cfg.max_q_l, d, cfg.input_dropout)
        self.span_embed = MLP(d, d, 2, 3)
        self.class_embed = nn.Linear(d, 2)  # index 0 = foreground
        self.query_embed = nn.Embedding(cfg.num_queries, 2)
        self.input_txt_proj = _projection(cfg.txt_dim, cfg)
        self.input_aud_proj = _projection(cfg.aud_dim + 2, cfg)
        self.saliency_proj1 = nn.Linear(d, d)
        self.saliency_proj2 = nn.Linear(d, d)
        self.global_rep_token = nn.Parameter(torch.randn(d))
        self.global_rep_pos = nn.Parameter(torch.randn(d))

    @property
    def t2v_mask(self) -> T2VMask:
        return cast(T2VMask, self.cfg.t2v_mask)

    def forward(self, src_txt: Tensor, src_txt_mask: Tensor, src_aud: Tensor, src_aud_mask: Tensor) -> dict:
        """
        Args:
            src_txt: (B, Lt, txt_dim) token features; src_txt_mask: (B, Lt) float, 1 = valid.
            src_aud: (B, La, aud_dim + 2) L2-normalised frames + time features; src_aud_mask: (B, La).
        Returns:
            pred_logits: (B, Nq, 2); pred_spans: (B, Nq, 2) sigmoid (center, width) normalised by La;
            saliency_scores, saliency_scores_neg: (B, La); audio_mask: (B, La);
            aux_outputs: list over earlier decoder layers of {pred_logits, pred_spans}.
        """
        b = src_aud.shape[0]
        aud = self.input_aud_proj(src_aud)
        txt = self.input_txt_proj(src_txt)
        aud_pos = self.position_embed(src_aud_mask)
        aud_pad = src_aud_mask == 0
        txt_pad = src_txt_mask == 0
        # Negative pass: each sample paired with the next sample's text (the last with the first).
        txt_neg, txt_pad_neg = txt.roll(-1, 0), txt_pad.roll(-1, 0)
        nhead, mode = self.transformer.nhead, self.t2v_mask
        blocked = torch.cat(
            [t2v_blocked(aud_pad, txt_pad, nhead, mode), t2v_blocked(aud_pad, txt_pad_neg, nhead, mode)]
        )
        memory = self.transformer.encode(
            torch.cat([aud, aud]),
            torch.cat([aud_pos, aud_pos]),
            torch.cat([aud_pad, aud_pad]),
            torch.cat([txt, txt_neg]),
            blocked,
            self.global_rep_token,
            self.global_rep_pos,
        )
        mem_global, mem = memory[:, 0], memory[:, 1:]
        saliency = (self.saliency_proj1(mem) * self.saliency_proj2(mem_global)[:, None]).sum(-1)
        saliency = saliency / math.sqrt(self.cfg.hidden_dim)

        anchors = self.query_embed.weight.sigmoid()[None].expand(b, -1, -1)
        hs, refs = self.transformer.decoder(mem[:b], aud_pos, aud_pad[:, None, None, :], anchors)
        logits = self.class_embed(hs)  # (L, B, Nq, 2)
        spans = (self.span_embed(hs) + inverse_sigmoid(refs)).sigmoid()  # (L, B, Nq, 2)
        out = {
            "pred_logits": logits[-1],
            "pred_spans": spans[-1],
            "saliency_scores": saliency[:b],
            "saliency_scores_neg": saliency[b:],
            "audio_mask": src_aud_mask,
        }
        if self.cfg.aux_loss:
            out["aux_outputs"] = aux_outputs(logits, spans)
        return out


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
