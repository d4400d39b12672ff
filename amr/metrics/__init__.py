"""Official evaluation metrics, their torchmetrics wrapper, prediction files and submissions."""

from amr.metrics.retrieval import BRIEF_KEYS, THRESHOLDS, evaluate

__all__ = ["BRIEF_KEYS", "THRESHOLDS", "evaluate"]
