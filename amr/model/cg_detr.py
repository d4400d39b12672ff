"""CG-DETR (Moon et al., 2024) as lighthouse runs it on CLAP audio.

Frames (2 time features first) and text tokens are projected and tagged with a token type. A small
encoder turns ``num_dummies`` learned dummy tokens into query-conditioned dummies. The T2V encoder
lets frames attend to [dummies ; words]: the softmax runs over all keys, the output sums only the
words, so the dummies absorb attention a frame does not give to the query. A global token is
built from the learned prompts most similar to the frames (weighted by how much each frame
attends to the words), the self-attention encoder runs over [global ; frames], and the anchor
decoder shared with QD-DETR gives spans and logits; saliency scores each frame against the
global token. In training, each sample is also encoded with the next sample's text (a negative
pair where the recordings differ), and moment and sentence tokens feed the alignment losses
(:mod:`amr.model.cg_criterion`).

All tensors are batch-first: (B, L, d).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from amr.model.decoder import MLP, Decoder, aux_outputs
from amr.model.dropout import Dropout
from amr.model.encoder import FFN, LayerStack, SelfAttentionLayer, t2v_blocked
from amr.model.inputs import InputLayout
from amr.model.position import AudioSinePosition, TrainableTextPosition
from amr.model.projection import InputProjection, input_projection
from amr.model.span_ops import inverse_sigmoid

INNER_HEADS = 8  # lighthouse's dummy and sentence encoders use 8 heads whatever ``nheads`` says


@dataclass
class CGDETRConfig:
    """Hyper-parameters; the defaults are lighthouse's for CG-DETR on CLAP audio."""

    hidden_dim: int = 256
    nheads: int = 8
    enc_layers: int = 3
    dec_layers: int = 3
    t2v_layers: int = 2
    sent_layers: int = 1
    moment_layers: int = 1
    dummy_layers: int = 2
    num_dummies: int = 45
    total_prompts: int = 10
    num_prompts: int = 2
    dim_feedforward: int = 1024
    dropout: float = 0.1
    input_dropout: float = 0.5
    num_queries: int = 10
    n_input_proj: int = 2
    aud_dim: int = 768  # audio frame size; 2 time features are put before it
    txt_dim: int = 768
    max_q_l: int = 32  # text cut to this many tokens; size of the (unused) learned text position table
    aux_loss: bool = True
    # the criterion's weights of its own terms (lighthouse's model file holds them too): the T2V
    # attention's saliency terms, the moment-sentence alignment, the distillation and orthogonality
    lw_wattn: float = 1.0
    lw_ms_align: float = 1.0
    lw_distill: float = 1.0

    def __post_init__(self) -> None:
        if self.hidden_dim % self.nheads or self.hidden_dim % INNER_HEADS:
            raise ValueError(f"hidden_dim {self.hidden_dim} must be divisible by nheads and by {INNER_HEADS}")


class DummyAttention(nn.Module):
    """Attention with no input projections whose output sums only the keys after the first
    ``n_dummies``: the dummies take part in the softmax and absorb mass, nothing is renormalised."""

    def __init__(self, dim: int, nhead: int, dropout: float) -> None:
        super().__init__()
        self.nhead = nhead
        self.dropout = Dropout(dropout)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, blocked: Tensor, n_dummies: int) -> tuple[Tensor, Tensor]:
        """q: (B, Lq, d); k, v: (B, Lk, d); blocked: bool, True = may not attend, broadcastable to
        (B, H, Lq, Lk). Returns (B, Lq, d) and the head-averaged weights (B, Lq, Lk) (before dropout)."""
        b, lq, d = q.shape
        h = self.nhead
        qh = (q * (d // h) ** -0.5).view(b, lq, h, d // h).transpose(1, 2)
        kh = k.view(b, -1, h, d // h).transpose(1, 2)
        vh = v.view(b, -1, h, d // h).transpose(1, 2)
        scores = (qh @ kh.transpose(-1, -2)).masked_fill(blocked, float("-inf"))
        weights = (scores - scores.amax(-1, keepdim=True)).softmax(-1)  # (B, H, Lq, Lk)
        used = self.dropout(weights)[..., n_dummies:]
        out = (used @ vh[:, :, n_dummies:]).transpose(1, 2).reshape(b, lq, d)
        return self.out_proj(out), weights.mean(1)


class T2VLayer(FFN):
    """Frames attend to [dummies ; words] (:class:`DummyAttention`), then a PReLU FFN (see
    :meth:`residual`)."""

    def __init__(self, dim: int, nhead: int, ffn_dim: int, dropout: float) -> None:
        super().__init__(dim, ffn_dim, dropout)
        self.self_attn = DummyAttention(dim, nhead, dropout)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.dropout1, self.dropout2 = Dropout(dropout), Dropout(dropout)

    def forward(
        self, x: Tensor, q: Tensor, k: Tensor, v: Tensor, blocked: Tensor, n_dummies: int
    ) -> tuple[Tensor, Tensor]:
        """x: (B, Lq, d) the frames updated, q = x + position; k, v: (B, Lk, d); blocked: see
        :class:`DummyAttention`."""
        out, weights = self.self_attn(q, k, v, blocked, n_dummies)
        return self.residual(x + self.dropout1(out)), weights

    def residual(self, x: Tensor) -> Tensor:
        """lighthouse's quirk (QD-DETR's too): the FFN reads ``norm1(x)``, its residual adds ``x``."""
        return self.norm2(x + self.dropout2(self.ffn(self.norm1(x))))


class Transformer(nn.Module):
    """The moment encoder (training only), T2V encoder, self-attention encoder and anchor decoder;
    every >1-d parameter inside gets xavier init (the decoder's zero ``bbox_embed`` weight too)."""

    def __init__(self, cfg: CGDETRConfig) -> None:
        super().__init__()
        d, h, f, p = cfg.hidden_dim, cfg.nheads, cfg.dim_feedforward, cfg.dropout
        self.mcls_encoder = LayerStack([SelfAttentionLayer(d, h, f, p) for _ in range(cfg.moment_layers)])
        self.t2v_encoder = LayerStack([T2VLayer(d, h, f, p) for _ in range(cfg.t2v_layers)])
        self.encoder = LayerStack([SelfAttentionLayer(d, h, f, p) for _ in range(cfg.enc_layers)])
        self.decoder = Decoder(d, h, f, p, cfg.dec_layers)
        for param in self.parameters():
            if param.dim() > 1:
                nn.init.xavier_uniform_(param)


class CGDETR(nn.Module):
    """See the module docstring."""

    def __init__(self, cfg: CGDETRConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or CGDETRConfig()
        self.cfg = cfg
        d, f, p = cfg.hidden_dim, cfg.dim_feedforward, cfg.dropout
        self.transformer = Transformer(cfg)
        self.position_embed = AudioSinePosition(d)
        self.txt_position_embed = TrainableTextPosition(cfg.max_q_l, d, cfg.input_dropout)  # built, unused
        self.span_embed = MLP(d, d, 2, 3)
        self.class_embed = nn.Linear(d, 2)  # index 0 = foreground
        self.token_type_embeddings = nn.Embedding(2, d)
        nn.init.normal_(self.token_type_embeddings.weight, std=0.02)
        self.query_embed = nn.Embedding(cfg.num_queries, 2)  # anchor (center, width) logits
        self.input_txt_proj = input_projection(cfg.txt_dim, d, cfg.n_input_proj, cfg.input_dropout)
        self.input_vid_proj = input_projection(cfg.aud_dim + 2, d, cfg.n_input_proj, cfg.input_dropout)
        self.txt_proj_linear = InputProjection(cfg.txt_dim, d, cfg.input_dropout, relu=True)  # built, unused
        self.saliency_proj1, self.saliency_proj2 = nn.Linear(d, d), nn.Linear(d, d)
        self.global_rep_token = nn.Parameter(torch.randn(cfg.total_prompts, d))
        self.global_rep_pos = nn.Parameter(torch.randn(1, d))
        self.moment_rep_token = nn.Parameter(torch.randn(d))
        self.moment_rep_pos = nn.Parameter(torch.randn(d))
        self.dummy_rep_token = nn.Parameter(torch.randn(cfg.num_dummies, d))
        self.dummy_rep_pos = nn.Parameter(torch.randn(cfg.num_dummies, d))
        self.sent_rep_token = nn.Parameter(torch.randn(d))
        self.sent_rep_pos = nn.Parameter(torch.randn(d))
        self.txtproj_encoder = LayerStack([SelfAttentionLayer(d, INNER_HEADS, f, p) for _ in range(cfg.dummy_layers)])
        self.scls_encoder = LayerStack([SelfAttentionLayer(d, INNER_HEADS, f, p) for _ in range(cfg.sent_layers)])

    @staticmethod
    def _encode(stack: LayerStack, x: Tensor, pos: Tensor, pad: Tensor) -> Tensor:
        """x, pos: (B, L, d); pad: (B, L) bool -> (B, L, d)."""
        for layer in stack.layers:
            x = layer(x, pos, pad[:, None, None, :])
        return x

    def dummies(self, txt: Tensor, txt_mask: Tensor) -> Tensor:
        """Query-conditioned dummy tokens (B, ND, d) from the projected words (B, Lt, d)."""
        b, nd = txt.shape[0], self.cfg.num_dummies
        x = torch.cat([self.dummy_rep_token.expand(b, -1, -1), txt], 1)
        pos = torch.cat([self.dummy_rep_pos.expand(b, -1, -1), torch.zeros_like(txt)], 1)
        pad = torch.cat([txt_mask.new_ones(b, nd), txt_mask], 1) == 0
        return self._encode(self.txtproj_encoder, x, pos, pad)[:, :nd]

    def t2v(
        self, vid: Tensor, vid_pos: Tensor, vid_pad: Tensor, keys: Tensor, key_pos: Tensor, key_pad: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Frames through the T2V layers; the keys ([dummies ; words]) pass unchanged. Which keys a
        frame may see is the QD-DETR mask with its batch-mixing quirk (:func:`t2v_blocked`), as
        lighthouse repeats it head-major too. Returns frames (B, Lv, d) and the attention weights
        averaged over layers (B, Lv, Lk)."""
        weights = []
        k = keys + key_pos
        blocked = t2v_blocked(vid_pad, key_pad, self.cfg.nheads, "official")
        for layer in self.t2v_layers:
            vid, w = layer(vid, vid + vid_pos, k, keys, blocked, self.cfg.num_dummies)
            weights.append(w)
        return vid, torch.stack(weights).mean(0)

    def global_token(self, src_vid: Tensor, vid_mask: Tensor, weights: Tensor, ctx: Tensor) -> Tensor:
        """(B, 1, d): the ``num_prompts`` prompts most similar to the frames (each frame weighted by
        the attention it gives the words), summed with their similarity, plus the frames' mean ``ctx``."""
        nd = self.cfg.num_dummies
        sim = F.cosine_similarity((src_vid - ctx)[:, :, None], self.global_rep_token[None, None], dim=-1)
        sim = sim.softmax(-1)  # (B, Lv, P)
        importance = weights[:, :, nd:].sum(-1).detach() * vid_mask
        importance = importance / importance.sum(1, keepdim=True) * vid_mask.shape[1]
        score = (sim * importance[..., None]).mean(1)  # (B, P)
        top, idx = score.topk(self.cfg.num_prompts, dim=-1)
        g = (top[..., None] * self.global_rep_token[idx]).sum(1, keepdim=True) + ctx
        for layer in self.t2v_layers:  # no keys: only out_proj.bias reaches it
            g = layer.residual(g + layer.dropout1(layer.self_attn.out_proj.bias))
        return g

    @property
    def t2v_layers(self) -> list[T2VLayer]:
        return cast(list[T2VLayer], list(self.transformer.t2v_encoder.layers))

    def encode(
        self,
        vid: Tensor,
        vid_pos: Tensor,
        vid_mask: Tensor,
        keys: Tensor,
        key_pos: Tensor,
        key_mask: Tensor,
        ctx: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """T2V encoder, global token and self-attention encoder over [global ; frames].
        vid, vid_pos: (B, Lv, d); keys, key_pos: (B, ND + Lt, d); masks float, 1 = valid; ctx: (B, 1, d).
        Returns memory_local (B, Lv, d) (the global state added), memory_global (B, 1, d) and the
        T2V weights (B, Lv, ND + Lt)."""
        b = vid.shape[0]
        vid_t2v, weights = self.t2v(vid, vid_pos, vid_mask == 0, keys, key_pos, key_mask == 0)
        g = self.global_token(vid, vid_mask, weights, ctx)
        x = torch.cat([g, vid_t2v], 1)
        pos = torch.cat([self.global_rep_pos.expand(b, -1, -1), vid_pos], 1)
        pad = torch.cat([vid_mask.new_ones(b, 1), vid_mask], 1) == 0
        memory = self._encode(self.transformer.encoder, x, pos, pad)
        return memory[:, 1:] + memory[:, :1], memory[:, :1], weights

    def saliency(self, mem_local: Tensor, mem_global: Tensor) -> Tensor:
        """(B, Lv): each frame's state against the global token, scaled by 1/sqrt(d)."""
        proj = self.saliency_proj1(mem_local) * self.saliency_proj2(mem_global)
        return proj.sum(-1) / math.sqrt(self.cfg.hidden_dim)

    @property
    def layout(self) -> InputLayout:
        """lighthouse's: time features first, text L2-normalised and cut to ``max_q_l`` tokens; in
        training the recording ids and relevant frames too."""
        return InputLayout(time_first=True, text_l2=True, max_text=self.cfg.max_q_l, pairs=True)

    def forward(
        self,
        src_txt: Tensor,
        src_txt_mask: Tensor,
        src_aud: Tensor,
        src_aud_mask: Tensor,
        vid: list[str] | None = None,
        targets: dict | None = None,
    ) -> dict:
        """
        Args:
            src_txt: (B, Lt, txt_dim) token features; src_txt_mask: (B, Lt) float, 1 = valid.
            src_aud: (B, Lv, 2 + aud_dim) time features, then frames; src_aud_mask: (B, Lv).
            vid: the recordings' ids: with them, each sample is also paired with the next sample's
                text (a negative where the recordings differ). targets: with ``relevant_clips``
                (B, Lv), the moment and sentence tokens the training losses read.
        Returns:
            pred_logits, pred_spans: (B, Nq, 2); saliency_scores: (B, Lv) (padded frames scored too);
            cate_attn_weights: (B, Lv, ND + Lt); t2vattnvalues: (B, Lv); dummy_tokens: (B, ND, d);
            global_rep_tokens: (P, d); txt_mask: (B, ND + Lt); video_mask: (B, Lv);
            aux_outputs: list over earlier decoder layers of {pred_logits, pred_spans};
            with ``vid``: real_neg_mask (B,) and, for its rows, saliency_scores_neg, t2vattnvalues_neg
            (n, Lv), src_txt_mask_neg (n, ND + Lt); with ``targets``: see :meth:`moment_tokens`.
        """
        nd = self.cfg.num_dummies
        frames = self.input_vid_proj(src_aud) + self.token_type_embeddings.weight[1]
        txt = self.input_txt_proj(src_txt) + self.token_type_embeddings.weight[0]
        vid_pos = self.position_embed(src_aud_mask)
        dummy = self.dummies(txt, src_txt_mask)
        b = frames.shape[0]
        keys = torch.cat([dummy, txt], 1)
        key_mask = torch.cat([src_txt_mask.new_ones(b, nd), src_txt_mask], 1)
        key_pos = torch.cat([self.dummy_rep_pos.expand(b, -1, -1), torch.zeros_like(txt)], 1)
        ctx = ((frames * src_aud_mask[..., None]).sum(1) / src_aud_mask.sum(1, keepdim=True)).detach()[:, None]
        mem_local, mem_global, weights = self.encode(frames, vid_pos, src_aud_mask, keys, key_pos, key_mask, ctx)
        anchors = self.query_embed.weight.sigmoid()[None].expand(b, -1, -1)
        hs, refs = self.transformer.decoder(mem_local, vid_pos, (src_aud_mask == 0)[:, None, None, :], anchors)
        out = {
            **self.predictions(hs, refs),
            "saliency_scores": self.saliency(mem_local, mem_global),
            "cate_attn_weights": weights,
            "t2vattnvalues": (weights[:, :, nd:] * src_txt_mask[:, None]).sum(-1).clamp(0, 1),
            "dummy_tokens": dummy,
            "global_rep_tokens": self.global_rep_token,
            "txt_mask": key_mask,
            "video_mask": src_aud_mask,
            "audio_mask": src_aud_mask,
        }
        if vid is not None:
            real = torch.tensor([a != c for a, c in zip(vid, vid[1:] + vid[:1], strict=True)], device=frames.device)
            out["real_neg_mask"] = real
            out.update(self.negatives(real, frames, vid_pos, src_aud_mask, keys, key_pos, key_mask, ctx))
        if targets is not None:
            out.update(self.moment_tokens(frames, vid_pos, src_aud_mask, txt, src_txt_mask, dummy, targets))
        return out

    def predictions(self, hs: Tensor, refs: Tensor) -> dict:
        """Logits and spans (relative to each layer's anchor) of the last decoder layer, and of
        the earlier ones as ``aux_outputs``. hs: (L, B, Nq, d); refs: (L, B, Nq, 2)."""
        logits = self.class_embed(hs)
        spans = (self.span_embed(hs) + inverse_sigmoid(refs)).sigmoid()
        out: dict = {"pred_logits": logits[-1], "pred_spans": spans[-1]}
        if self.cfg.aux_loss:
            out["aux_outputs"] = aux_outputs(logits, spans)
        return out

    def negatives(
        self,
        real: Tensor,
        frames: Tensor,
        vid_pos: Tensor,
        vid_mask: Tensor,
        keys: Tensor,
        key_pos: Tensor,
        key_mask: Tensor,
        ctx: Tensor,
    ) -> dict[str, Tensor | None]:
        """Each sample's frames with the next sample's [dummies ; words] (its dummies included), for
        the rows whose recordings differ (``real``), encoded again with the sample's own ``ctx``."""
        if not bool(real.any()):
            return {"saliency_scores_neg": None, "t2vattnvalues_neg": None}
        rolled, rolled_mask = keys.roll(-1, 0)[real], key_mask.roll(-1, 0)[real]
        mem_local, mem_global, weights = self.encode(
            frames[real], vid_pos[real], vid_mask[real], rolled, key_pos[real], rolled_mask, ctx[real]
        )
        words = rolled_mask[:, self.cfg.num_dummies :]
        return {
            "saliency_scores_neg": self.saliency(mem_local, mem_global),
            "t2vattnvalues_neg": (weights[:, :, self.cfg.num_dummies :] * words[:, None]).sum(-1).clamp(0, 1),
            "src_txt_mask_neg": rolled_mask,
        }

    def moment_tokens(
        self,
        frames: Tensor,
        vid_pos: Tensor,
        vid_mask: Tensor,
        txt: Tensor,
        txt_mask: Tensor,
        dummy: Tensor,
        targets: dict,
    ) -> dict[str, Tensor]:
        """The training-only tokens: a sentence token over the words and over the dummies, and a
        moment token over the relevant frames and over the others (the same token and position).

        Returns memory_moment, nmmemory_moment, sentence_txt, sentence_dummy: (B, d);
        moment2txt_similarity, nmoment2txt_similarity: (B, Lv, ND + Lt) (each frame's encoded
        state against the encoded [dummies ; words]); moment_mask: (B, Lv) bool; src_vid (B, Lv, d)."""
        b, d = frames.shape[0], self.cfg.hidden_dim
        one = vid_mask.new_ones(b, 1)
        sent = self.sent_rep_token.expand(b, 1, d)
        sent_pos = self.sent_rep_pos.expand(b, 1, d)
        words = self._encode(
            self.scls_encoder,
            torch.cat([sent, txt], 1),
            torch.cat([sent_pos, torch.zeros_like(txt)], 1),
            torch.cat([one, txt_mask], 1) == 0,
        )
        dummies = self._encode(
            self.scls_encoder,
            torch.cat([sent, dummy], 1),
            torch.cat([sent_pos, self.dummy_rep_pos.expand(b, -1, -1)], 1),
            torch.cat([one, one.expand(-1, dummy.shape[1])], 1) == 0,
        )
        proj = torch.cat([dummies[:, 1:], words[:, 1:]], 1)  # (B, ND + Lt, d)
        relevant = targets["relevant_clips"].clamp(0, 1).bool()
        x = torch.cat([self.moment_rep_token.expand(b, 1, d), frames], 1)
        pos = torch.cat([self.moment_rep_pos.expand(b, 1, d), vid_pos], 1)
        valid = vid_mask.bool()
        moment = self._encode(self.transformer.mcls_encoder, x, pos, ~torch.cat([one.bool(), valid & relevant], 1))
        other = self._encode(self.transformer.mcls_encoder, x, pos, ~torch.cat([one.bool(), valid & ~relevant], 1))
        m_frames, n_frames = moment[:, 1:], other[:, 1:]
        return {
            "memory_moment": moment[:, 0],
            "nmmemory_moment": other[:, 0],
            "sentence_txt": words[:, 0],
            "sentence_dummy": dummies[:, 0],
            "moment2txt_similarity": m_frames @ proj.transpose(1, 2),
            "nmoment2txt_similarity": n_frames @ proj.transpose(1, 2),
            "moment_mask": relevant,
            "src_vid": m_frames * relevant[..., None] + n_frames * (~relevant[..., None]).float(),
        }
