"""The networks a run can train: the ``model`` group's ``name`` -> its config, network, criterion.

Each network declares the input layout it reads (``layout``, :mod:`amr.model.inputs`); a
checkpoint's ``model`` settings name their network (settings without a name are QD-DETR's: amr
trained no other network before).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from torch import nn

from amr.model.cg_criterion import CGDETRCriterion, cg_weight_dict
from amr.model.cg_detr import CGDETR, CGDETRConfig
from amr.model.criterion import HingeSaliencyCriterion, LossConfig, SetCriterion, build_criterion, official_weight_dict
from amr.model.moment_detr import MomentDETR, MomentDETRConfig
from amr.model.qd_detr import QDDETR, QDDETRConfig

DEFAULT = "qd_detr"


def _qd_detr_criterion(cfg: Any, loss: LossConfig) -> SetCriterion:
    return build_criterion(cfg.dec_layers, cfg.aux_loss, **vars(loss))


def _moment_detr_criterion(cfg: Any, loss: LossConfig) -> SetCriterion:
    c = loss
    weights = official_weight_dict(
        c.span_loss_coef, c.giou_loss_coef, c.label_loss_coef, c.lw_saliency, cfg.dec_layers, cfg.aux_loss
    )
    return HingeSaliencyCriterion(c.hungarian(), weights, **c.settings())  # type: ignore[arg-type]


def _cg_detr_criterion(cfg: Any, loss: LossConfig) -> SetCriterion:
    c = loss
    weights = cg_weight_dict(
        c.span_loss_coef,
        c.giou_loss_coef,
        c.label_loss_coef,
        c.lw_saliency,
        cfg.lw_ms_align,
        cfg.lw_distill,
        cfg.dec_layers,
        cfg.aux_loss,
    )
    return CGDETRCriterion(c.hungarian(), weights, lw_wattn=cfg.lw_wattn, **c.settings())


@dataclass(frozen=True)
class Retriever:
    """One choice of the ``model`` group. ``stacks``: None when N seeds can be trained as one
    vmapped model, else why not (one line)."""

    name: str
    config: type
    network: Callable[[Any], nn.Module]
    criterion: Callable[[Any, LossConfig], SetCriterion]
    stacks: str | None = None

    def settings(self, settings: Mapping[str, Any]) -> Any:
        """The network's config from a ``model`` mapping (its ``name`` aside); an unknown key or a
        bad value is a ValueError naming it."""
        known = {f.name for f in fields(self.config)}
        unknown = sorted(set(settings) - known - {"name"})
        if unknown:
            keys = ", ".join(f"model.{k}" for k in unknown)
            raise ValueError(f"{keys}: not a setting of model={self.name} (its settings: {', '.join(sorted(known))})")
        return self.config(**{k: v for k, v in settings.items() if k != "name"})


TORCH_DROPOUT = "its attention dropout is torch's own, whose draws a stacked member cannot make as its run alone"
BATCH_NEGATIVES = (
    "its negative pairs keep the rows whose recordings differ, a shape set by the data that vmap cannot run"
)
MODELS: dict[str, Retriever] = {
    "qd_detr": Retriever("qd_detr", QDDETRConfig, QDDETR, _qd_detr_criterion),
    "moment_detr": Retriever("moment_detr", MomentDETRConfig, MomentDETR, _moment_detr_criterion, TORCH_DROPOUT),
    "cg_detr": Retriever("cg_detr", CGDETRConfig, CGDETR, _cg_detr_criterion, BATCH_NEGATIVES),
}


def retriever(settings: Mapping[str, Any]) -> Retriever:
    """The network a ``model`` mapping names (QD-DETR when it names none)."""
    name = settings.get("name", DEFAULT)
    if name not in MODELS:
        raise ValueError(f"model.name={name!r} is not a network amr has; choose one of {', '.join(MODELS)}")
    return MODELS[name]


def build(settings: Mapping[str, Any]) -> tuple[nn.Module, Any]:
    """The network a ``model`` mapping describes, and its config."""
    spec = retriever(settings)
    cfg = spec.settings(settings)
    return spec.network(cfg), cfg


def criterion(settings: Mapping[str, Any], loss: Mapping[str, Any]) -> SetCriterion:
    """The criterion of the network a ``model`` mapping describes, with the ``loss`` settings."""
    spec = retriever(settings)
    return spec.criterion(spec.settings(settings), LossConfig(**loss))
