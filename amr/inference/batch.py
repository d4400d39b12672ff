"""The one inference path: a collated batch -> the network's outputs and official prediction lines.

Validation and test, ``amr submit`` and :class:`amr.Predictor` all go through :func:`predict_batch`,
so de-normalisation, the official post-processing and the line format are written once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from amr.inference.calibration import Calibrator
from amr.inference.decoders import DecodeConfig, Rows, decode_batch
from amr.model import network_inputs, postprocess

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


@dataclass
class Candidates:
    """What the decoders read, per query: the official rows (seconds, best first), the saliency of
    the valid frames (T_b,) and the recording's duration."""

    meta: list[dict[str, Any]] = field(default_factory=list)
    detr_rows: list[Rows] = field(default_factory=list)
    curves: list[np.ndarray] = field(default_factory=list)
    durations: list[float] = field(default_factory=list)

    def extend(self, other: Candidates) -> None:
        for name in ("meta", "detr_rows", "curves", "durations"):
            getattr(self, name).extend(getattr(other, name))

    def lines(
        self, decode: DecodeConfig | None = None, calibrator: Calibrator | None = None, chunk: int = 1024
    ) -> list[dict[str, Any]]:
        """Official prediction lines under ``decode`` (default the official decoding), re-scored by
        ``calibrator`` when given."""
        decode = decode or DecodeConfig()
        rows: list[Rows] = []
        for i in range(0, len(self.meta), chunk):
            part = slice(i, i + chunk)
            rows += decode_batch(self.detr_rows[part], self.curves[part], self.durations[part], decode)
        if calibrator is not None:
            rows = [
                calibrator.rescore(r, d, c, t)
                for r, d, c, t in zip(rows, self.detr_rows, self.curves, self.durations, strict=True)
            ]
        return [prediction_line(meta, r) for meta, r in zip(self.meta, rows, strict=True)]


def network_outputs(
    model: nn.Module, batch: dict[str, Any], max_ts: float = MAX_TS
) -> tuple[dict[str, Any], Candidates]:
    """Run the network on a batch of :func:`amr.data.dataset.collate` (in the input layout it
    declares): its outputs, and the official
    rows (spans de-normalised by each item's ``duration``, clamped to ``[0, max_ts]``, ranked by
    foreground probability) with each item's valid-frame saliency."""
    outputs = model(**network_inputs(model, batch, next(model.parameters()).device))
    durations = [float(d) for d in batch["duration"].tolist()]
    ranked = postprocess(outputs, durations, max_ts=max_ts)
    saliency = outputs["saliency_scores"].detach().float().cpu().numpy()
    valid = outputs["audio_mask"].detach().cpu().numpy() > 0
    curves = [saliency[i][valid[i]] for i in range(len(ranked))]
    return outputs, Candidates(list(batch["meta"]), ranked, curves, durations)


def predict_batch(
    model: nn.Module,
    batch: dict[str, Any],
    max_ts: float = MAX_TS,
    decode: DecodeConfig | None = None,
    calibrator: Calibrator | None = None,
) -> BatchPrediction:
    """The network's outputs on a batch and its official prediction lines; another ``decode`` forms
    or re-scores the moments from the per-frame saliency of each item's valid frames, and a
    ``calibrator`` re-scores them."""
    outputs, cands = network_outputs(model, batch, max_ts)
    return BatchPrediction(outputs, cands.lines(decode, calibrator))
