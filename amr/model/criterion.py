"""The official set criterion: span L1, GIoU, foreground/background CE and the saliency losses,
on the final decoder layer and (without saliency) on every auxiliary layer."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from amr.model.matcher import HungarianMatcher
from amr.model.span_ops import cxw_to_xx, paired_generalized_temporal_iou, temporal_iou

FOREGROUND, BACKGROUND = 0, 1
# the class-logit losses and their default alpha: the official cross-entropy; focal loss (Lin et al.,
# 2017) on binary targets; varifocal loss (Zhang et al., 2021) on IoU-aware targets
CLS_LOSSES: dict[str, float | None] = {"ce": None, "focal": 0.25, "varifocal": 0.75}


class SetCriterion(nn.Module):
    """Returns a dict of loss terms; ``weight_dict`` gives each term's weight in the total."""

    empty_weight: Tensor

    def __init__(
        self,
        matcher: HungarianMatcher,
        weight_dict: dict[str, float],
        eos_coef: float = 0.1,
        saliency_margin: float = 0.2,
        tau: float = 0.5,
        cls: str = "ce",
        cls_alpha: float | None = None,
        cls_gamma: float = 2.0,
    ) -> None:
        super().__init__()
        if cls not in CLS_LOSSES:
            raise ValueError(f"loss.cls must be one of {list(CLS_LOSSES)}, got {cls!r}")
        self.cls, self.cls_gamma = cls, cls_gamma
        self.cls_alpha = float(cls_alpha if cls_alpha is not None else CLS_LOSSES[cls] or 0.0)
        self.matcher = matcher
        self.weight_dict = dict(weight_dict)
        self.saliency_margin = saliency_margin
        self.tau = tau
        self.register_buffer("empty_weight", torch.tensor([1.0, eos_coef]))

    @staticmethod
    def _src_idx(indices: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        batch = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
        return batch, torch.cat([src for src, _ in indices])

    def loss_spans(self, outputs: dict, targets: dict, indices: list) -> dict[str, Tensor]:
        idx = self._src_idx(indices)
        src = outputs["pred_spans"][idx]  # (n_matched, 2)
        tgt = torch.cat([t["spans"][j] for t, (_, j) in zip(targets["span_labels"], indices, strict=True)])
        tgt = tgt.to(src.device)
        return {
            "loss_span": F.l1_loss(src, tgt, reduction="none").mean(),
            "loss_giou": (1 - paired_generalized_temporal_iou(cxw_to_xx(src), cxw_to_xx(tgt))).mean(),
        }

    def _matched_iou(self, outputs: dict, targets: dict, indices: list) -> Tensor:
        """IoU of each matched prediction with its GT window (no gradient): the varifocal target."""
        src = outputs["pred_spans"][self._src_idx(indices)].detach()
        tgt = torch.cat([t["spans"][j] for t, (_, j) in zip(targets["span_labels"], indices, strict=True)])
        iou, _ = temporal_iou(cxw_to_xx(src), cxw_to_xx(tgt.to(src.device)))
        return iou.diagonal() if len(src) else src.new_zeros(0)

    def _focal(self, logits: Tensor, target: Tensor) -> Tensor:
        """Focal (binary target) or varifocal (IoU target) loss of the foreground probability
        p = softmax(logits)[FOREGROUND] = sigmoid(l_fg - l_bg), per query. target: (B, Nq) in [0, 1]."""
        z = logits[..., FOREGROUND] - logits[..., BACKGROUND]
        p = torch.sigmoid(z)
        bce = F.binary_cross_entropy_with_logits(z, target, reduction="none")
        alpha, gamma = self.cls_alpha, self.cls_gamma
        if self.cls == "focal":
            p_t = torch.where(target > 0, p, 1 - p)
            return torch.where(target > 0, alpha, 1 - alpha) * (1 - p_t) ** gamma * bce
        # varifocal: positives weighted by their IoU target, negatives down-weighted by alpha * p^gamma
        return torch.where(target > 0, target, alpha * p.detach() ** gamma) * bce

    def loss_labels(self, outputs: dict, targets: dict, indices: list) -> dict[str, Tensor]:
        logits = outputs["pred_logits"]  # (B, Nq, 2)
        idx = self._src_idx(indices)
        matched = logits[idx]
        correct = (matched.argmax(-1) == FOREGROUND).float().mean() * 100 if len(matched) else logits.new_tensor(0.0)
        if self.cls != "ce":  # mean over every query, as the official term
            soft = logits.new_zeros(logits.shape[:2])
            soft[idx] = self._matched_iou(outputs, targets, indices) if self.cls == "varifocal" else 1.0
            return {"loss_label": self._focal(logits, soft).mean(), "class_error": (100 - correct).detach()}
        target = torch.full(logits.shape[:2], BACKGROUND, dtype=torch.int64, device=logits.device)
        target[idx] = FOREGROUND
        ce = F.cross_entropy(logits.transpose(1, 2), target, self.empty_weight, reduction="none")
        # Official quirk, kept for parity: a plain mean of the class-weighted CE, not divided by the sum
        # of the weights as a weighted mean would be (it scales this term's gradient).
        return {"loss_label": ce.mean(), "class_error": (100 - correct).detach()}

    def loss_saliency(self, outputs: dict, targets: dict) -> dict[str, Tensor]:
        mask = outputs["audio_mask"]  # (B, La) float
        sal = outputs["saliency_scores"]
        sal_neg = outputs["saliency_scores_neg"]
        # -log(1 - sigmoid(x)) written as softplus(x): the same value, without the official form's
        # overflow to inf for large scores.
        neg_pair = (F.softplus(sal_neg) * mask).sum(1).mean()

        labels = targets["saliency_all_labels"].to(sal.dtype)
        scores = torch.cat([sal, sal_neg], 1)
        labels = torch.cat([labels, torch.zeros_like(labels)], 1)
        mask2 = mask.repeat(1, 2)
        scores = mask2 * scores + (1.0 - mask2) * -1e3
        logits = scores / self.tau
        logits = logits - logits.max(1, keepdim=True)[0]
        log_prob = logits - torch.log(logits.exp().sum(1, keepdim=True) + 1e-6)
        # Official: thresholds 1..11 over the saliency level, summed, divided by 12 (its 11 thresholds
        # + 1; kept for parity). The official loop stops at the batch's top level; the levels above it
        # have no positives and add exact zeros, so all 11 are taken at once, without reading the top
        # level back from the device. Binary labels make only level 1 active.
        levels = torch.arange(1, 12, device=sal.device, dtype=labels.dtype)[:, None, None]
        pos = (labels[None] >= levels).to(sal.dtype)  # (11, B, 2La)
        has_pos = pos.sum(2) > 0
        mean_log_prob_pos = (pos * log_prob * mask2).sum(2) / (pos.sum(2) + 1e-6)
        rank = (-mean_log_prob_pos * has_pos).mean(1).sum(0) / 12

        return {"loss_saliency": self.saliency_hinge(sal, targets) + rank + neg_pair}

    def saliency_hinge(self, sal: Tensor, targets: dict) -> Tensor:
        """Margin ranking of each sampled positive frame over its negative, summed, divided by
        the number of pairs and doubled (official). sal: (B, La); labels: (B, P) frame indices."""
        pos_idx = targets["saliency_pos_labels"].to(sal.device)  # (B, P)
        neg_idx = targets["saliency_neg_labels"].to(sal.device)
        pos_s = sal.gather(1, pos_idx)
        neg_s = sal.gather(1, neg_idx)
        return (self.saliency_margin + neg_s - pos_s).clamp(min=0).sum() / (pos_s.numel()) * 2

    def forward(self, outputs: dict, targets: dict) -> dict[str, Tensor]:
        """
        Args:
            outputs: model outputs (see :class:`amr.model.qd_detr.QDDETR`).
            targets: ``span_labels`` (list of {"spans": (n, 2) cxw}), ``saliency_pos_labels`` (B, 2),
                ``saliency_neg_labels`` (B, 2), ``saliency_all_labels`` (B, La).
        Returns:
            loss_span, loss_giou, loss_label, class_error, loss_saliency, and for each auxiliary
            layer i: loss_span_i, loss_giou_i, loss_label_i, class_error_i.
        """
        indices = self.matcher(outputs, targets)
        losses = {**self.loss_spans(outputs, targets, indices), **self.loss_labels(outputs, targets, indices)}
        if "saliency_pos_labels" in targets:
            losses.update(self.loss_saliency(outputs, targets))
        for i, aux in enumerate(outputs.get("aux_outputs", [])):
            aux_indices = self.matcher(aux, targets)
            terms = {**self.loss_spans(aux, targets, aux_indices), **self.loss_labels(aux, targets, aux_indices)}
            losses.update({f"{k}_{i}": v for k, v in terms.items()})
        return losses

    def total(self, losses: dict[str, Tensor]) -> Tensor:
        """Weighted sum of the terms that have a weight."""
        return torch.stack([losses[k] * w for k, w in self.weight_dict.items() if k in losses]).sum()


class HingeSaliencyCriterion(SetCriterion):
    """Moment-DETR's criterion: the same span, GIoU and label terms, and the margin ranking alone
    for saliency (no rank contrast, no negative pair: the network has no negative pass)."""

    def loss_saliency(self, outputs: dict, targets: dict) -> dict[str, Tensor]:
        return {"loss_saliency": self.saliency_hinge(outputs["saliency_scores"], targets)}


def official_weight_dict(
    span: float = 10.0,
    giou: float = 1.0,
    label: float = 4.0,
    saliency: float = 1.0,
    dec_layers: int = 2,
    aux_loss: bool = True,
) -> dict[str, float]:
    weights = {"loss_span": span, "loss_giou": giou, "loss_label": label, "loss_saliency": saliency}
    if aux_loss:
        for i in range(dec_layers - 1):
            weights.update({f"loss_span_{i}": span, f"loss_giou_{i}": giou, f"loss_label_{i}": label})
    return weights


@dataclass
class LossConfig:
    """Matching costs and loss weights; the defaults are the official ``config.yml`` values."""

    set_cost_class: float = 4.0
    set_cost_span: float = 10.0
    set_cost_giou: float = 1.0
    span_loss_coef: float = 10.0
    giou_loss_coef: float = 1.0
    label_loss_coef: float = 4.0
    lw_saliency: float = 1.0
    eos_coef: float = 0.1
    saliency_margin: float = 0.2
    cls: str = "ce"  # class-logit loss: ce (official) | focal | varifocal (IoU-aware targets)
    cls_alpha: float | None = None  # focal/varifocal alpha; None: 0.25 focal, 0.75 varifocal
    cls_gamma: float = 2.0
    matcher: str = "scipy"  # assignment solver: scipy (official, per sample on the CPU) | enumerate (on device)

    def hungarian(self) -> HungarianMatcher:
        """The matcher these costs make."""
        return HungarianMatcher(self.set_cost_class, self.set_cost_span, self.set_cost_giou, solver=self.matcher)

    def settings(self) -> dict[str, float | str | None]:
        """The keyword arguments of :class:`SetCriterion` beside the matcher and the weights."""
        names = ("eos_coef", "saliency_margin", "cls", "cls_alpha", "cls_gamma")
        return {name: getattr(self, name) for name in names}


def build_criterion(dec_layers: int = 2, aux_loss: bool = True, **losses: float | str | None) -> SetCriterion:
    """The official criterion; keyword arguments override fields of :class:`LossConfig`."""
    c = LossConfig(**losses)  # type: ignore[arg-type]
    weights = official_weight_dict(
        c.span_loss_coef, c.giou_loss_coef, c.label_loss_coef, c.lw_saliency, dec_layers, aux_loss
    )
    return SetCriterion(c.hungarian(), weights, **c.settings())  # type: ignore[arg-type]
