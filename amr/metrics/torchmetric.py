"""The official metrics as a ``torchmetrics.Metric``: accumulates predictions over steps and devices."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torchmetrics import Metric

from amr.metrics.retrieval import MAX_PREDICTIONS, evaluate


class MomentRetrievalMetric(Metric):
    """Collects ``[st, ed, score]`` rows per query (by dataset index) and scores them officially.

    Query ids are strings, which cannot cross devices, so each query is identified by its index
    into ``qids``/``gt_windows`` (the split's annotation order). Indices seen twice (a distributed
    sampler pads the last batch) are counted once.
    """

    full_state_update = False
    index: list[torch.Tensor]
    rows: list[torch.Tensor]

    def __init__(
        self,
        qids: Sequence[str],
        gt_windows: Sequence[Sequence[Sequence[float]]],
        buckets: Mapping[str, tuple[float, float]] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if len(qids) != len(gt_windows):
            raise ValueError("qids and gt_windows differ in length")
        self.qids = list(qids)
        self.buckets = dict(buckets or {})  # GT-length buckets scored besides the official "full" range
        self.gt = [np.asarray(w, dtype=float).reshape(-1, 2) for w in gt_windows]
        self.add_state("index", default=[], dist_reduce_fx="cat")
        self.add_state("rows", default=[], dist_reduce_fx="cat")

    def update(self, index: torch.Tensor, rows: torch.Tensor) -> None:
        """index: (B,) dataset indices; rows: (B, K, 3) ranked ``[st, ed, score]`` (K <= 10 are scored)."""
        self.index.append(index.detach().long().reshape(-1))
        self.rows.append(rows.detach().double()[:, :MAX_PREDICTIONS])

    def compute(self) -> dict[str, Any]:
        index = torch.cat(self.index) if isinstance(self.index, list) else self.index
        rows = torch.cat(self.rows) if isinstance(self.rows, list) else self.rows
        preds: dict[str, np.ndarray] = {}
        gts: dict[str, np.ndarray] = {}
        for i, r in zip(index.cpu().tolist(), rows.cpu().numpy(), strict=True):
            if self.qids[i] not in preds:
                preds[self.qids[i]] = r[~np.isnan(r[:, 0])]  # NaN rows pad lines with fewer windows
                gts[self.qids[i]] = self.gt[i]
        return evaluate(preds, gts, self.buckets)
