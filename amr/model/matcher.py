"""Hungarian matching between the Nq predicted spans of each sample and its GT spans.

Two exact solvers of the same assignment problem: ``scipy`` (``linear_sum_assignment`` per sample on
the CPU: the official way, the reference and the default) and ``enumerate`` (every injective
assignment of at most ``max_gt`` GT spans to the Nq queries scored at once on the cost's device, one
batched minimum: no copy to the host, no per-sample loop). Training samples carry at most
``max_windows`` = 5 GT spans, and 10 queries give 10!/5! = 30,240 assignments per sample.
"""

from __future__ import annotations

import itertools
from functools import lru_cache

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from amr.model.span_ops import cxw_to_xx, generalized_temporal_iou

SOLVERS = ("scipy", "enumerate")


@lru_cache(maxsize=8)
def injective_assignments(nq: int, k: int, device: str = "cpu") -> Tensor:
    """(nq! / (nq - k)!, k) int64: row m gives the query of each of k columns; lexicographic order."""
    table = torch.tensor(list(itertools.permutations(range(nq), k)), dtype=torch.int64)
    return table.view(-1, k).to(device)


def exact_assignment(cost: Tensor, valid: Tensor) -> Tensor:
    """The minimum-cost injective assignment of each sample's valid columns to rows, by enumeration.

    Args:
        cost: (B, Nq, K) float, Nq >= K.
        valid: (B, K) bool, the sample's real columns (padding: False).
    Returns:
        (B, K) int64: the row of each column (for padding columns, a row no real column has).
        Summed in float64; of equal totals the first in lexicographic order wins.
    """
    b, nq, k = cost.shape
    table = injective_assignments(nq, k, str(cost.device))  # (M, K)
    c = cost.double().masked_fill(~valid[:, None, :], 0.0).transpose(1, 2)  # (B, K, Nq); padding free
    cols = torch.arange(k, device=cost.device)[:, None]
    total = c[:, cols, table.T].sum(1)  # (B, M): c[b, j, table[m, j]] summed over j
    return table[total.argmin(1)]


class HungarianMatcher(nn.Module):
    """Cost = cost_span * L1(cxw) + cost_giou * (-GIoU) + cost_class * (-p_foreground).

    The cost matrix is computed once for the whole batch against all GT spans of the batch; the
    assignment is solved per sample on the CPU (``scipy``) or for the whole batch on the cost's
    device (``enumerate``, for batches whose samples have at most ``max_gt`` GT spans; others go to
    scipy). Both give an optimal assignment; pairs come in query order (scipy) or GT order
    (enumerate), which no loss depends on.
    """

    def __init__(
        self,
        cost_class: float = 4.0,
        cost_span: float = 10.0,
        cost_giou: float = 1.0,
        solver: str = "scipy",
        max_gt: int = 5,
    ) -> None:
        super().__init__()
        if cost_class == 0 and cost_span == 0 and cost_giou == 0:
            raise ValueError("all matching costs are 0")
        if solver not in SOLVERS:
            raise ValueError(f"matcher solver must be one of {', '.join(SOLVERS)}, got {solver!r}")
        self.cost_class = cost_class
        self.cost_span = cost_span
        self.cost_giou = cost_giou
        self.solver = solver
        self.max_gt = max_gt

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
        sizes = [len(t) for t in tgt]  # shapes: known on the host without a copy
        if self.solver == "enumerate" and max(sizes) <= min(self.max_gt, nq):
            return self._enumerate(cost.view(b, nq, -1), sizes)
        cost_np = cost.view(b, nq, -1).float().cpu().numpy()
        out = []
        start = 0
        for i, n in enumerate(sizes):
            rows, cols = linear_sum_assignment(cost_np[i, :, start : start + n]) if n else (np.zeros(0), np.zeros(0))
            out.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
            start += n
        return out

    def _enumerate(self, cost: Tensor, sizes: list[int]) -> list[tuple[Tensor, Tensor]]:
        """cost (B, Nq, N): each sample's columns padded to ``max_gt``, solved at once on the device."""
        k, device = min(self.max_gt, cost.shape[1]), cost.device
        starts = np.cumsum([0, *sizes[:-1]])
        cols = torch.as_tensor(np.minimum(starts[:, None] + np.arange(k), cost.shape[-1] - 1), device=device)
        valid = torch.as_tensor(np.arange(k) < np.asarray(sizes)[:, None], device=device)
        padded = cost.gather(2, cols[:, None, :].expand(-1, cost.shape[1], -1))  # (B, Nq, K)
        rows = exact_assignment(padded, valid)
        gt = torch.arange(k, device=device)
        return [(rows[i, :n], gt[:n]) for i, n in enumerate(sizes)]
