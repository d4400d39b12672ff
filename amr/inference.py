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
from amr.model.decode import DecodeConfig, decode_sample

MAX_TS = 300.0  # the official clamp of predicted windows, in seconds, whatever the recording's length


@dataclass
class BatchPrediction:
    outputs: dict[str, Any]  # the network's outputs (pred_logits, pred_spans, saliency, ...)
    lines: list[dict[str, Any]]  # one official prediction line per item, windows best first

    def rows(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """(B, K, 3) float64 ``[st, ed, score]`` of every line, for the metrics; lines with fewer
        than K rows (decoders other than ``detr``) are padded with NaN rows, which the metric drops."""
        width = max(len(ln["pred_relevant_windows"]) for ln in self.lines)
        out = torch.full((len(self.lines), width, 3), float("nan"), dtype=torch.float64)
        for i, ln in enumerate(self.lines):
            w = ln["pred_relevant_windows"]
            out[i, : len(w)] = torch.tensor(w, dtype=torch.float64)
        return out.to(device)


def prediction_line(meta: dict[str, Any], windows: list[list[float]]) -> dict[str, Any]:
    """``{"qid", "query", "vid", "pred_relevant_windows": [[st, ed, score], ...]}``."""
    return {"qid": meta["qid"], "query": meta["query"], "vid": meta["vid"], "pred_relevant_windows": windows}


def predict_batch(
    model: nn.Module, batch: dict[str, Any], max_ts: float = MAX_TS, decode: DecodeConfig | None = None
) -> BatchPrediction:
    """Run the network on a batch of :func:`amr.data.dataset.collate` and post-process it.

    Spans are de-normalised by each item's ``duration`` and clamped to ``[0, max_ts]``; the rows
    are ranked by foreground probability (official post-processing). Another ``decode`` then forms
    or re-scores the moments from the per-frame saliency of each item's valid frames.
    """
    device = next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in batch["inputs"].items()}
    outputs = model(**inputs)
    durations = batch["duration"].tolist()
    ranked = postprocess(outputs, durations, max_ts=max_ts)
    if decode is not None and decode.name != "detr":
        saliency = outputs["saliency_scores"].detach().float().cpu().numpy()
        valid = outputs["audio_mask"].detach().cpu().numpy() > 0
        ranked = [
            decode_sample(rows, saliency[i][valid[i]], float(durations[i]), decode) for i, rows in enumerate(ranked)
        ]
    lines = [prediction_line(meta, rows) for meta, rows in zip(batch["meta"], ranked, strict=True)]
    return BatchPrediction(outputs, lines)
