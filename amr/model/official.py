"""Loading official baseline checkpoints and building the official criterion."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from amr.errors import InputError
from amr.model.criterion import SetCriterion
from amr.model.encoder import T2VMask
from amr.model.matcher import HungarianMatcher
from amr.model.qd_detr import QDDETR, QDDETRConfig


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


def build_criterion(dec_layers: int = 2, aux_loss: bool = True, **losses: float) -> SetCriterion:
    """The official criterion; keyword arguments override fields of :class:`LossConfig`."""
    c = LossConfig(**losses)
    matcher = HungarianMatcher(cost_class=c.set_cost_class, cost_span=c.set_cost_span, cost_giou=c.set_cost_giou)
    weights = official_weight_dict(
        c.span_loss_coef, c.giou_loss_coef, c.label_loss_coef, c.lw_saliency, dec_layers, aux_loss
    )
    return SetCriterion(matcher, weights, eos_coef=c.eos_coef, saliency_margin=c.saliency_margin)


def _state_dict(checkpoint: str | Path | dict[str, Any]) -> dict[str, torch.Tensor]:
    if isinstance(checkpoint, (str, Path)):
        path = Path(checkpoint)
        if not path.is_file():
            raise InputError("checkpoint not found", path)
        obj = torch.load(path, map_location="cpu", weights_only=False)
    else:
        obj = checkpoint
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(f"not an official checkpoint or state dict: {checkpoint!s:.100}")
    return obj


def from_official(checkpoint: str | Path | dict[str, Any], t2v_mask: T2VMask = "official", **config: Any) -> QDDETR:
    """Build the baseline network and load official weights (strict: every key must match).

    Args:
        checkpoint: path to an official ``.pth`` (a dict with key ``model``) or a state dict.
        t2v_mask: ``official`` reproduces the official batched outputs bit for bit; ``per_sample``
            makes each sample's output independent of its batch.
    Returns:
        The model in eval mode.
    """
    sd = _state_dict(checkpoint)
    cfg = QDDETRConfig(t2v_mask=t2v_mask, **config)
    model = QDDETR(cfg)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise InputError(
            f"checkpoint does not fit the model: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    return model.eval()
