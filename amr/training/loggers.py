"""What a training stage reports while it runs: its loggers, and the callbacks that log one line
per epoch and seed every step. Everything goes through Python logging, so Hydra's job log
(``<run>/train.log``) holds the epoch lines and the results table."""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import sys
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import Logger

from amr.metrics.retrieval import MONITOR_LOGGED
from amr.results.run_folder import LOGS, RunFolder, set_aside_csv
from amr.runtime import step_seed
from amr.training.launch import in_sweep
from amr.training.naming import MAX_TAG, short_value, sweep_keys, system_name, tags

log = logging.getLogger("amr.train")
# Lightning's per-Trainer notices (device lines, tips) and its model summary: once per process
_LIGHTNING_NOTICES = ("pytorch_lightning.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero")
_seen_a_stage = False
EPOCH_LINE = ("train/loss", "val/R1@0.5", MONITOR_LOGGED, "val/mAP")  # the figures of an epoch's log line


def first_stage_of_process() -> bool:
    """True for the first stage this process trains; later ones keep Lightning's notices quiet."""
    global _seen_a_stage
    first = not _seen_a_stage
    _seen_a_stage = True
    if not first:
        for name in _LIGHTNING_NOTICES:
            logging.getLogger(name).setLevel(logging.WARNING)
    return first


class EpochLine(Callback):
    """One line per epoch when the progress bar is off (stdout is not a terminal)."""

    def __init__(self, stage: str) -> None:
        self.stage = stage

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        m = trainer.callback_metrics
        parts = [f"{k}={float(m[k]):.4g}" for k in EPOCH_LINE if k in m]
        log.info("[%s] epoch %d/%d %s", self.stage, trainer.current_epoch + 1, trainer.max_epochs, " ".join(parts))


class StepSeed(Callback):
    """Seed torch from (seed, epoch, batch) before every training step, so a resumed run draws the
    same dropout as an uninterrupted one whatever else touched the global generator."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_batch_start(self, trainer: pl.Trainer, module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        torch.manual_seed(step_seed(self.seed, trainer.current_epoch, batch_idx))


def target_class(target: str) -> Any:
    """The object ``target`` (``module.Class``) names, or None when it does not import."""
    where, _, attr = target.rpartition(".")
    try:
        return getattr(importlib.import_module(where), attr)
    except (ImportError, AttributeError, ValueError):
        return None


def issubclass_of(target: str, base: type) -> bool:
    """Whether ``target`` (``module.Class``) imports and is a subclass of ``base``."""
    cls = target_class(target)
    return isinstance(cls, type) and issubclass(cls, base)


def logger_class(name: str, node: Any) -> type:
    """The Lightning logger class of ``logger.<name>``; ValueError (naming the key) when the entry has
    no ``_target_``, the class cannot be imported, is not a Lightning logger, or does not take one of
    the given arguments."""
    if not OmegaConf.is_dict(node) or "_target_" not in node:
        raise ValueError(f"logger.{name} needs a _target_ (a Lightning logger class), got {node!r}")
    cls = target_class(str(node._target_))
    if cls is None:
        raise ValueError(f"logger.{name}._target_: cannot import {node._target_!r}")
    if not (isinstance(cls, type) and issubclass(cls, Logger)):
        raise ValueError(f"logger.{name}._target_: {node._target_} is not a Lightning logger")
    module = sys.modules.get(cls.__module__)
    for flag, available in vars(module).items() if module else ():
        if flag.startswith("_") and flag.endswith("_AVAILABLE") and not available:  # Lightning's package checks
            raise ValueError(f"logger.{name}: {str(available).splitlines()[0]}")
    params = inspect.signature(cls.__init__).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(node) - {"_target_"} - set(params))
        if unknown:
            raise ValueError(f"logger.{name}: {cls.__name__} takes no argument {', '.join(unknown)}")
    return cls


def stage_loggers(
    cfg: DictConfig,
    stage: str,
    stage_dir: Path,
    job_dir: Path,
    extra: dict[str, Any],
    resumed: bool = False,
    overrides: list[str] | None = None,
    wandb: bool | None = None,
) -> list:
    """The configured loggers of one stage, each built from its ``_target_`` with amr's defaults
    below the arguments the config gives (a null argument keeps the default):

    - CSV and TensorBoard write under ``stage_dir/logs/<stage>`` (what ``amr report`` reads);
    - W&B writes under the job's own folder (a cached pre-training stage's folder is renamed when it
      finishes), one run per stage, grouped by system, named ``<system>,seed=<s>/<stage>``, tagged
      (:func:`run_tags`); ``extra`` goes into the run's config;
    - any other logger that takes a ``save_dir`` gets ``stage_dir/logs/<stage>``.

    A ``resumed`` stage keeps the CSV rows of its earlier attempts. ``overrides``: the job's, unless
    given (a stacked member's name its own seed). ``wandb``: only the W&B loggers (True), only the
    others (False), or all (None)."""
    if resumed:
        set_aside_csv(RunFolder(stage_dir).logs / stage)
    loggers: list = []
    for name, node in cfg.logger.items():
        cls = logger_class(str(name), node)
        if wandb is not None and issubclass(cls, pl.loggers.WandbLogger) != wandb:
            continue
        given = {str(k): v for k, v in _resolved(node).items() if k != "_target_" and v is not None}
        if issubclass(cls, (pl.loggers.CSVLogger, pl.loggers.TensorBoardLogger)):
            default: dict[str, Any] = {"save_dir": str(stage_dir), "name": LOGS, "version": stage}
        elif issubclass(cls, pl.loggers.WandbLogger):
            default = _wandb_defaults(cfg, stage, job_dir, extra, overrides)
            os.environ.setdefault("WANDB_MODE", str(given.get("mode", "offline")))
        elif "save_dir" in inspect.signature(cls.__init__).parameters:
            default = {"save_dir": str(RunFolder(stage_dir).logs / stage)}
        else:
            default = {}
        try:
            loggers.append(cls(**{**default, **given}))
        except ImportError as e:  # the logger's own package is not installed
            raise ValueError(f"logger.{name}: {str(e).splitlines()[0]}") from None
    return loggers


def _resolved(node: Any) -> dict:
    out = OmegaConf.to_container(node, resolve=True)
    assert isinstance(out, dict)
    return out


def _wandb_defaults(
    cfg: DictConfig, stage: str, job_dir: Path, extra: dict[str, Any], overrides: list[str] | None
) -> dict[str, Any]:
    overrides = job_overrides() if overrides is None else overrides
    system = system_name(cfg.experiment_name, overrides, sweep_keys())
    job_dir.mkdir(parents=True, exist_ok=True)
    return {
        "save_dir": str(job_dir),
        "group": system,
        "job_type": stage,
        "name": f"{system},seed={cfg.seed}/{stage}",
        "tags": run_tags(list(cfg.tags), overrides),
        "config": {**_resolved(cfg), "system": system, **extra},
    }


def run_tags(own: list[str], overrides: list[str]) -> list[str]:
    """A W&B run's tags: the config's ``tags`` as given, one per override, and in a sweep
    ``sweep=<its folder's name>``, so that the runs of two sweeps of one system are told apart
    (each tag within W&B's length limit)."""
    out = [str(t)[:MAX_TAG] for t in own] + tags(overrides)
    if in_sweep():
        out.append(f"sweep={short_value(Path(str(HydraConfig.get().sweep.dir)).name)}"[:MAX_TAG])
    return out


def wandb_run_id(loggers: list) -> str | None:
    for lg in loggers:
        if isinstance(lg, pl.loggers.WandbLogger):
            return str(lg.experiment.id)
    return None


def job_overrides() -> list[str]:
    try:
        return [o for o in HydraConfig.get().overrides.task if not o.startswith(("hydra.", "paths."))]
    except ValueError:
        return []


def finish_wandb(loggers: list) -> None:
    if any(isinstance(lg, pl.loggers.WandbLogger) for lg in loggers):
        import wandb

        wandb.finish()
