"""Hungarian matching between the Nq predicted spans of each sample and its GT spans."""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from amr.model.span_ops import cxw_to_xx, generalized_temporal_iou


class HungarianMatcher(nn.Module):
    """Cost = cost_span * L1(cxw) + cost_giou * (-GIoU) + cost_class * (-p_foreground).

    The cost matrix is computed once for the whole batch against all GT spans of the batch; only
    the assignment itself runs per sample (on the CPU).
    """

    def __init__(self, cost_class: float = 4.0, cost_span: float = 10.0, cost_giou: float = 1.0) -> None:
        super().__init__()
        if cost_class == 0 and cost_span == 0 and cost_giou == 0:
            raise ValueError("all matching costs are 0")
        self.cost_class = cost_class
        self.cost_span = cost_span
        self.cost_giou = cost_giou

    @torch.no_grad()
    def forward(self, outputs: dict, targets: dict) -> list[tuple[Tensor, Tensor]]:
        """
        Args:
            outputs: ``pred_logits`` (B, Nq, 2), ``pred_spans`` (B, Nq, 2) cxw.
            targets: ``span_labels``: list of B dicts with ``spans`` (n_b, 2) cxw.
        Returns:
            B pairs (pred_idx, gt_idx) of int64 tensors, each of length min(Nq, n_b).
        """
        b, nq = outputs["pred_spans"].shape[:2]
        tgt = [t["spans"] for t in targets["span_labels"]]
        tgt_spans = torch.cat(tgt)  # (N, 2)
        if tgt_spans.numel() == 0:
            empty = torch.empty(0, dtype=torch.int64)
            return [(empty, empty) for _ in range(b)]
        prob = outputs["pred_logits"].flatten(0, 1).softmax(-1)[:, :1]  # (B*Nq, 1) foreground
        spans = outputs["pred_spans"].flatten(0, 1)
        cost = (
            self.cost_span * torch.cdist(spans, tgt_spans, p=1)
            - self.cost_giou * generalized_temporal_iou(cxw_to_xx(spans), cxw_to_xx(tgt_spans))
            - self.cost_class * prob
        )
        cost_np = cost.view(b, nq, -1).float().cpu().numpy()
        out = []
        start = 0
        for i, t in enumerate(tgt):
            n = len(t)
            rows, cols = linear_sum_assignment(cost_np[i, :, start : start + n]) if n else (np.zeros(0), np.zeros(0))
            out.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
            start += n
        return out
