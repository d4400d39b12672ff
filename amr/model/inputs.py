"""The input layout a network reads, and a collated batch arranged into it.

The data layer builds every batch in the official layout: L2-normalised audio frames with the two
time features after them, text tokens as extracted. A network declares its own layout
(``layout``); :func:`network_inputs` gives it that, so no part of the data layer asks which
network it serves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

EPS = 1e-5  # the frame normalisation's: x / (||x|| + 1e-5)


@dataclass(frozen=True)
class InputLayout:
    """What a network reads beyond the official batch.

    time_first: the 2 time features before the frame instead of after it (lighthouse).
    text_l2: text tokens L2-normalised as the frames are. max_text: text cut to this many tokens.
    pairs: with targets (training, validation loss), the recording ids (``vid``: negatives are
    paired across recordings) and the relevant frames (``targets["relevant_clips"]``) are passed too.
    """

    time_first: bool = False
    text_l2: bool = False
    max_text: int | None = None
    pairs: bool = False


OFFICIAL = InputLayout()


def arrange(layout: InputLayout, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
    """Official inputs (``src_txt`` (B, Lt, Dt), ``src_txt_mask``, ``src_aud`` (B, La, Da + 2),
    ``src_aud_mask``) in ``layout``."""
    out = dict(inputs)
    if layout.time_first:
        aud = out["src_aud"]
        out["src_aud"] = torch.cat([aud[..., -2:], aud[..., :-2]], -1)
    if layout.max_text is not None:
        out["src_txt"] = out["src_txt"][:, : layout.max_text]
        out["src_txt_mask"] = out["src_txt_mask"][:, : layout.max_text]
    if layout.text_l2:
        txt = out["src_txt"]
        out["src_txt"] = txt / (txt.norm(dim=-1, keepdim=True) + EPS)
    return out


def network_inputs(net: Any, batch: dict[str, Any], device: torch.device | None = None) -> dict[str, Any]:
    """The keyword arguments of ``net`` for a collated batch, its tensors on ``device`` (default
    where they are)."""
    inputs = {k: v if device is None else v.to(device) for k, v in batch["inputs"].items()}
    layout: InputLayout = net.layout
    out: dict[str, Any] = arrange(layout, inputs)
    if layout.pairs and "targets" in batch:
        labels = batch["targets"]["saliency_all_labels"].to(out["src_aud"].device)
        out["vid"] = [m["vid"] for m in batch["meta"]]
        out["targets"] = {"relevant_clips": labels}
    return out
