"""A Lightning logger whose package is missing, declared as Lightning declares its loggers'
requirements (``MLFlowLogger`` without mlflow)."""

from __future__ import annotations

from lightning_utilities.core.imports import RequirementCache
from pytorch_lightning.loggers import Logger

_NOTHING_AVAILABLE = RequirementCache("nothing-of-that-name>=1")


class UninstalledLogger(Logger):
    def __init__(self) -> None:
        if not _NOTHING_AVAILABLE:
            raise ModuleNotFoundError(str(_NOTHING_AVAILABLE))

    name = version = "none"

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        pass
