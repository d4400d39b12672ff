"""The official QD-DETR baseline: model, matcher, criterion, post-processing."""

from amr.model.criterion import SetCriterion
from amr.model.matcher import HungarianMatcher
from amr.model.official import build_criterion, from_official, official_weight_dict
from amr.model.postprocess import postprocess
from amr.model.qd_detr import QDDETR, QDDETRConfig, count_parameters

__all__ = [
    "QDDETR",
    "HungarianMatcher",
    "QDDETRConfig",
    "SetCriterion",
    "build_criterion",
    "count_parameters",
    "from_official",
    "official_weight_dict",
    "postprocess",
]
