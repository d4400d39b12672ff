"""What a training stage reports while it runs: its loggers, and the callbacks that print one line
per epoch and seed every step."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import Callback


class EpochLine(Callback):
    """One line per epoch when the progress bar is off (stdout is not a terminal)."""

    def __init__(self, stage: str) -> None:
        self.stage = stage

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        m = trainer.callback_metrics
        parts = [f"{k}={float(m[k]):.4g}" for k in ("train/loss", "val/R1@0.5", "val/R1@0.7", "val/mAP") if k in m]
        print(f"[{self.stage}] epoch {trainer.current_epoch + 1}/{trainer.max_epochs} " + " ".join(parts), flush=True)


class StepSeed(Callback):
    """Seed torch from (seed, epoch, batch) before every training step, so a resumed run draws the
    same dropout as an uninterrupted one whatever else touched the global generator."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_batch_start(self, trainer: pl.Trainer, module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        torch.manual_seed((self.seed * 1_000_003 + trainer.current_epoch) * 100_003 + batch_idx)


def stage_loggers(cfg: DictConfig, stage: str, out_dir: Path) -> list:
    kind = cfg.logger.kind
    if kind == "none":
        return []
    if kind == "csv":
        return [pl.loggers.CSVLogger(save_dir=str(out_dir), name="logs", version=stage)]
    if kind == "tensorboard":
        return [pl.loggers.TensorBoardLogger(save_dir=str(out_dir), name="logs", version=stage)]
    os.environ.setdefault("WANDB_MODE", cfg.logger.mode)
    overrides = job_overrides()
    return [
        pl.loggers.WandbLogger(
            project=cfg.logger.project,
            entity=cfg.logger.entity,
            save_dir=str(out_dir),
            group=cfg.logger.group or cfg.experiment_name,
            job_type=stage,
            name=f"{cfg.experiment_name}[{','.join(overrides)}]/{stage}"
            if overrides
            else f"{cfg.experiment_name}/{stage}",
            tags=[*cfg.tags, *overrides][:64],
            mode=cfg.logger.mode,
            config=OmegaConf.to_container(cfg, resolve=True),
        )
    ]


def job_overrides() -> list[str]:
    try:
        return [o for o in HydraConfig.get().overrides.task if not o.startswith(("hydra.", "paths."))]
    except ValueError:
        return []


def finish_wandb(loggers: list) -> None:
    if any(isinstance(lg, pl.loggers.WandbLogger) for lg in loggers):
        import wandb

        wandb.finish()
