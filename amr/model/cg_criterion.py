"""CG-DETR's criterion as lighthouse computes it: QD-DETR's span, GIoU and label terms (final and
auxiliary layers), and for the final layer a saliency term over scores and T2V attention, the
moment-sentence alignment, the attention distillation and the orthogonality of the dummies."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from amr.model.criterion import SetCriterion
from amr.model.matcher import HungarianMatcher

TAU = 0.5


def rank_contrastive(scores: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
    """lighthouse's rank contrast: for each level r = 1..11 with positives (labels >= r), the mean
    log-softmax (temperature 0.5) of the positives of each row holding one, averaged over rows;
    summed over levels and divided by 12. ``scores`` are set to -1e3 where ``mask`` is 0.

    Reductions run over dim 1 and the final mean over everything, as lighthouse's: a (1, 1, L)
    input (its single false-negative row) therefore contrasts each frame with itself only."""
    scores = mask * scores + (1.0 - mask) * -1e3
    total = scores.new_zeros(())
    for level in range(1, 12):
        pos = labels >= level
        if not bool(pos.any()):
            continue
        logits = scores / TAU
        logits = logits - logits.max(dim=1, keepdim=True)[0]
        log_prob = logits - torch.log(logits.exp().sum(1, keepdim=True) + 1e-6)
        mean_pos = (pos * log_prob * mask).sum(1) / (pos.sum(1) + 1e-6)
        total = total + (-mean_pos * (pos.sum(1) > 0)).mean()
    return total / 12


class CGDETRCriterion(SetCriterion):
    """Weights (lighthouse's ``weight_dict``): span, giou, label and saliency as QD-DETR's, and
    ``loss_ms_align``, ``loss_distill`` and ``loss_orthogonal_dummy`` (the last one weighted by
    ``lw_distill``); their per-layer copies are in the dict too, as lighthouse builds it, but only
    the span, GIoU and label terms exist for the auxiliary layers."""

    def __init__(
        self,
        matcher: HungarianMatcher,
        weight_dict: dict[str, float],
        lw_wattn: float = 1.0,
        **settings: float | str | None,
    ) -> None:
        """``settings``: :class:`SetCriterion`'s (``eos_coef``, ``saliency_margin``, ``cls``, ...)."""
        super().__init__(matcher, weight_dict, **settings)  # type: ignore[arg-type]
        self.lw_wattn = lw_wattn

    def loss_saliency(self, outputs: dict, targets: dict) -> dict[str, Tensor]:
        mask = outputs["video_mask"]
        labels = targets["saliency_all_labels"]
        s, a = outputs["saliency_scores"], outputs["t2vattnvalues"]
        bce = F.binary_cross_entropy(a.reshape(-1), labels.clamp(0, 1).reshape(-1))  # padding included
        if outputs.get("saliency_scores_neg") is None:  # no negative pair (no ids, or one recording)
            own = self.saliency_hinge(s, targets) + rank_contrastive(s, labels, mask)
            attn = rank_contrastive(a, labels, mask) + bce + self.saliency_hinge(a, targets)
            return {"loss_saliency": own + self.lw_wattn * attn}
        real = outputs["real_neg_mask"]
        s_neg, a_neg = outputs["saliency_scores_neg"], outputs["t2vattnvalues_neg"]
        m_real = mask[real]
        both_labels = torch.cat([labels[real], torch.zeros_like(labels[real])], 1)
        neg_pair = (F.softplus(s_neg) * m_real).sum(1).mean()  # -log(1 - sigmoid(x))
        rank = rank_contrastive(torch.cat([s[real], s_neg], 1), both_labels, m_real.repeat(1, 2))
        fake = ~real
        if bool(fake.any()):  # rows paired with their own recording: contrasted on their own scores
            pick = (lambda x: x[fake][None]) if int(fake.sum()) == 1 else (lambda x: x[fake])
            rank = rank + rank_contrastive(pick(s), pick(labels), pick(mask))
        sal = self.saliency_hinge(s, targets) + rank + neg_pair
        # the attention branch; lighthouse's false-negative term here reaches no loss (its source)
        neg_pair_a = (-torch.log(1.0 - a_neg) * m_real).sum(1).mean()
        rank_a = rank_contrastive(torch.cat([a[real], a_neg], 1), both_labels, m_real.repeat(1, 2))
        attn = rank_a + bce + neg_pair_a + self.saliency_hinge(a, targets)
        return {"loss_saliency": sal + self.lw_wattn * attn}

    @staticmethod
    def loss_ms_align(outputs: dict, targets: dict) -> Tensor:
        """Moment token near its sentence token and the non-moment token far from it; the dummy
        sentence the other way round (lighthouse's labels: class 1 for row 0, class 0 for the others);
        and the moment token classifying the relevant frames."""
        m = F.normalize(outputs["memory_moment"], dim=1)
        n = F.normalize(outputs["nmmemory_moment"], dim=1)
        s = F.normalize(outputs["sentence_txt"], dim=1)
        sd = F.normalize(outputs["sentence_dummy"], dim=1)
        b = m.shape[0]
        own = torch.arange(b, device=m.device)
        loss = F.cross_entropy(torch.cat([m @ s.T, n @ s.T], 1), own)
        dummy_target = torch.zeros(b, dtype=torch.int64, device=m.device)
        dummy_target[0] = 1  # the first maximum of each row of [~eye, ones]: column 1 for row 0, 0 after
        loss = loss + F.cross_entropy(torch.cat([m @ sd.T, n @ sd.T], 1), dummy_target)
        logit = torch.sigmoid(outputs["memory_moment"][:, None] @ outputs["src_vid"].transpose(1, 2))  # (B, 1, Lv)
        relevant = targets["saliency_all_labels"].clamp(0, 1)  # lighthouse's relevant_clips
        bce = F.binary_cross_entropy(logit.reshape(-1), relevant.reshape(-1), reduction="none")
        return loss + (bce * outputs["video_mask"].reshape(-1)).mean()

    @staticmethod
    def loss_distill(outputs: dict) -> Tensor:
        """KL from the frames' similarity to [dummies ; words] (softmax, no gradient, padded words
        not masked) to the T2V attention, averaged over the keys, over the relevant frames."""
        attn = outputs["cate_attn_weights"]
        b, lv, lk = attn.shape
        target = outputs["moment2txt_similarity"].softmax(-1).detach().reshape(b * lv, lk)
        kl = F.kl_div(torch.log(attn + 1e-6).reshape(b * lv, lk), target, reduction="none").mean(1)
        moment = outputs["moment_mask"].int().reshape(-1)
        return (kl * moment).sum() / moment.sum()

    @staticmethod
    def loss_orthogonal(outputs: dict) -> Tensor:
        """Mean absolute cosine between different dummies of a sample, plus between different
        prompts (the second factor without gradient)."""

        def off_diagonal(x: Tensor) -> Tensor:
            unit = x / x.norm(dim=-1, keepdim=True)
            sim = unit @ unit.detach().transpose(-1, -2)
            eye = torch.eye(sim.shape[-1], dtype=torch.bool, device=sim.device)
            return sim.masked_fill(eye, 0.0).abs().mean()

        dummies = outputs["dummy_tokens"]
        loss = off_diagonal(dummies) if dummies.shape[1] != 1 else dummies.new_zeros(())
        return loss + off_diagonal(outputs["global_rep_tokens"])

    def forward(self, outputs: dict, targets: dict) -> dict[str, Tensor]:
        losses = super().forward(outputs, targets)
        if outputs.get("memory_moment") is not None:
            losses["loss_ms_align"] = self.loss_ms_align(outputs, targets)
            losses["loss_distill"] = self.loss_distill(outputs)
        losses["loss_orthogonal_dummy"] = self.loss_orthogonal(outputs)
        return losses


def cg_weight_dict(
    span: float = 10.0,
    giou: float = 1.0,
    label: float = 4.0,
    saliency: float = 1.0,
    ms_align: float = 1.0,
    distill: float = 1.0,
    dec_layers: int = 3,
    aux_loss: bool = True,
) -> dict[str, float]:
    """lighthouse's CG-DETR weights; the orthogonality term takes ``distill``'s weight."""
    final = {"loss_ms_align": ms_align, "loss_distill": distill, "loss_orthogonal_dummy": distill}
    weights = {"loss_span": span, "loss_giou": giou, "loss_label": label, "loss_saliency": saliency, **final}
    for i in range(dec_layers - 1 if aux_loss else 0):
        weights.update({f"loss_span_{i}": span, f"loss_giou_{i}": giou, f"loss_label_{i}": label})
        weights.update({f"{k}_{i}": v for k, v in final.items()})
    return weights
