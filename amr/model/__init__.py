"""The retrievers (the official QD-DETR baseline, lighthouse's Moment-DETR and CG-DETR): networks,
matcher, criteria, post-processing, and the registry the ``model`` group picks from."""

from amr.model.criterion import LossConfig, SetCriterion, build_criterion, official_weight_dict
from amr.model.inputs import InputLayout, network_inputs
from amr.model.matcher import HungarianMatcher
from amr.model.postprocess import postprocess
from amr.model.qd_detr import QDDETR, QDDETRConfig, count_parameters
from amr.model.registry import MODELS, Retriever, build, criterion, retriever

__all__ = [
    "MODELS",
    "QDDETR",
    "HungarianMatcher",
    "InputLayout",
    "LossConfig",
    "QDDETRConfig",
    "Retriever",
    "SetCriterion",
    "build",
    "build_criterion",
    "count_parameters",
    "criterion",
    "network_inputs",
    "official_weight_dict",
    "postprocess",
    "retriever",
]
