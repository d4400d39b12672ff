"""Official post-processing: model outputs -> ranked ``[st, ed, score]`` windows in seconds."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from amr.model.span_ops import cxw_to_xx


def _r4(x: float) -> float:
    return float(f"{x:.4f}")


def postprocess(
    outputs: dict, durations: Sequence[float] | Tensor, max_ts: float = 300.0, clip_length: float = 1.0
) -> list[list[list[float]]]:
    """Official ranking and rounding, value for value.

    For each sample: spans are de-normalised by the JSONL ``duration`` (official, although training
    normalised them by the frame count), ranked by foreground probability (stable), every value
    rounded to 4 decimals; then start/end are clamped to ``[0, max_ts]`` (a fixed 300 s, not the
    recording's duration) and rounded half-to-even to multiples of ``clip_length`` in float32.

    Args:
        outputs: ``pred_logits`` (B, Nq, 2), ``pred_spans`` (B, Nq, 2).
        durations: (B,) seconds.
    Returns:
        B lists of Nq rows ``[st, ed, score]``, best first.
    """
    prob = outputs["pred_logits"].detach().float().softmax(-1)[..., 0].cpu()
    spans = cxw_to_xx(outputs["pred_spans"].detach().float().cpu())
    result = []
    for i, dur in enumerate(durations):
        xx = (spans[i] * float(dur)).numpy()
        score = prob[i].numpy()
        order = np.argsort(-score, kind="stable")
        rows = [[_r4(float(xx[j, 0])), _r4(float(xx[j, 1])), _r4(float(score[j]))] for j in order]
        t = torch.tensor(rows, dtype=torch.float32)
        win = torch.round(t[:, :2].clamp(min=0, max=max_ts) / clip_length) * clip_length
        result.append(
            [
                [float(st), float(ed), _r4(float(sc))]
                for (st, ed), sc in zip(win.tolist(), t[:, 2].tolist(), strict=True)
            ]
        )
    return result
