"""The official QD-DETR baseline: model, matcher, criterion, post-processing."""

from amr.model.criterion import LossConfig, SetCriterion, build_criterion, official_weight_dict
from amr.model.matcher import HungarianMatcher
from amr.model.postprocess import postprocess
from amr.model.qd_detr import QDDETR, QDDETRConfig, count_parameters

__all__ = [
    "QDDETR",
    "HungarianMatcher",
    "LossConfig",
    "QDDETRConfig",
    "SetCriterion",
    "build_criterion",
    "count_parameters",
    "official_weight_dict",
    "postprocess",
]
