"""The one inference path: a collated batch -> the network's outputs and official prediction lines.

Validation and test, ``amr submit`` and :class:`amr.Predictor` all go through :func:`predict_batch`,
so de-normalisation, the official post-processing and the line format are written once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from amr.model import postprocess

MAX_TS = 300.0  # the official clamp of predicted windows, in seconds, whatever the recording's length


@dataclass
class BatchPrediction:
    outputs: dict[str, Any]  # the network's outputs (pred_logits, pred_spans, saliency, ...)
    lines: list[dict[str, Any]]  # one official prediction line per item, windows best first

    def rows(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """(B, Nq, 3) float64 ``[st, ed, score]`` of every line, for the metrics."""
        return torch.tensor([ln["pred_relevant_windows"] for ln in self.lines], dtype=torch.float64, device=device)


def prediction_line(meta: dict[str, Any], windows: list[list[float]]) -> dict[str, Any]:
    """``{"qid", "query", "vid", "pred_relevant_windows": [[st, ed, score], ...]}``."""
    return {"qid": meta["qid"], "query": meta["query"], "vid": meta["vid"], "pred_relevant_windows": windows}


def predict_batch(model: nn.Module, batch: dict[str, Any], max_ts: float = MAX_TS) -> BatchPrediction:
    """Run the network on a batch of :func:`amr.data.dataset.collate` and post-process it.

    Spans are de-normalised by each item's ``duration`` and clamped to ``[0, max_ts]``; the rows
    are ranked by foreground probability (official post-processing).
    """
    device = next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in batch["inputs"].items()}
    outputs = model(**inputs)
    ranked = postprocess(outputs, batch["duration"].tolist(), max_ts=max_ts)
    lines = [prediction_line(meta, rows) for meta, rows in zip(batch["meta"], ranked, strict=True)]
    return BatchPrediction(outputs, lines)
