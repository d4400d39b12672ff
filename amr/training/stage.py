"""One training stage, built, run and evaluated alike for a run alone and for each member of
stacked runs: its datamodule, module and Trainer, the best checkpoint's evaluation, and a finished
run's records. A stage writes checkpoints/, predictions/ and logs/ into its stage folder
(:mod:`amr.results.run_folder`).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig
from pytorch_lightning.callbacks import ModelCheckpoint, ProgressBar

from amr.checkpoints import AtomicCheckpointIO, load_weights
from amr.data.datamodule import MomentDataModule, ensure_dataset
from amr.data.features import Encoder, Layout
from amr.errors import InputError
from amr.metrics.retrieval import BRIEF_KEYS, MONITOR_LOGGED, SHORT_NAMES, logged_names
from amr.results.report import write_timelines
from amr.results.run_folder import BEST, LAST, RunFolder
from amr.runtime import is_rank_zero
from amr.training.config import plain, stage_augment, stages_of
from amr.training.loggers import (
    EpochLine,
    StepSeed,
    finish_wandb,
    first_stage_of_process,
    job_overrides,
    stage_loggers,
    wandb_run_id,
)
from amr.training.module import MomentRetrievalModule
from amr.training.naming import sweep_keys, system_name

log = logging.getLogger("amr.train")
PRETRAIN_STAGE = "pretrain"
MAIN_STAGE = "finetune"  # the main stage's name, with or without a pre-training stage before it


@dataclass
class StageResult:
    best_ckpt: Path
    results: dict[str, dict[str, Any]]
    wandb_run: str | None = None


def stage_settings(cfg: DictConfig, stage: str) -> tuple[DictConfig, DictConfig]:
    """A stage's data config and its own settings (epochs, batch sizes)."""
    return (cfg.pretrain.data, cfg.pretrain) if stage == PRETRAIN_STAGE else (cfg.data, cfg.train)


def build_datamodule(cfg: DictConfig, stage: str) -> MomentDataModule:
    data_cfg, stage_cfg = stage_settings(cfg, stage)
    time_mask, pivots = stage_augment(cfg, stage)
    return MomentDataModule(
        data_cfg,
        batch_size=stage_cfg.batch_size,
        eval_batch_size=stage_cfg.eval_batch_size,
        cache_dir=cfg.paths.cache_dir,
        seed=cfg.seed,
        num_workers=cfg.num_workers,
        time_mask=time_mask,
        pivots=pivots,
        on_device=cfg.batches_on_device,
        fixed_shapes=cfg.fixed_shapes,
        encoder=Encoder.of(cfg.features),
    )


def check_datasets(cfg: DictConfig) -> None:
    """Every stage's dataset is there (a synthetic one generated at its own root) before any stage
    trains: a mistyped root is one line at the start, not after a pre-training."""
    trains_pretrain = cfg.fit and not cfg.init_from  # init_from replaces the pre-training stage
    for stage in stages_of(cfg) if trains_pretrain else (MAIN_STAGE,):
        ensure_dataset(stage_settings(cfg, stage)[0], Encoder.of(cfg.features))


def build_module(cfg: DictConfig, init: Path | None = None, stage: str = MAIN_STAGE) -> MomentRetrievalModule:
    """The training module of this config for ``stage`` (whose feature set its checkpoints name):
    the network, criterion and optimiser settings; the
    network compiled (``compile=MODE``, one shape per split with ``fixed_shapes``) when set;
    initialised from ``init``'s weights when given (fresh optimiser, scheduler and epoch, as the
    official recipe fine-tunes)."""
    data = stage_settings(cfg, stage)[0]
    module = MomentRetrievalModule(
        model=plain(cfg.model),
        loss=plain(cfg.loss),
        optim=plain(cfg.optim),
        decode=plain(cfg.decode),
        features={"name": data.name, "feat_dir": data.feat_dir, "encoder": Encoder.of(cfg.features).record()},
    )
    if cfg.get("compile"):
        module.model.compile(mode=cfg.compile, dynamic=False)  # in place: parameter names unchanged
    if init is not None:
        load_weights(module, init)
    return module


def trainer_settings(cfg: DictConfig, interactive: bool) -> dict[str, Any]:
    """The ``trainer`` group's settings (unset ones left to Lightning); Lightning's model summary
    once per process, and the progress bar when ``interactive`` unless the group says."""
    kwargs = {k: v for k, v in plain(cfg.trainer).items() if v is not None}
    kwargs.setdefault("enable_model_summary", first_stage_of_process())
    kwargs.setdefault("enable_progress_bar", interactive)
    return kwargs


def checkpoint_callback(stage_dir: Path, best: bool, monitor: str = MONITOR_LOGGED) -> ModelCheckpoint:
    """``best``: weights only, replaced only on strict improvement of ``monitor`` (as logged), so it is
    the first epoch reaching the maximum (as the official code selects its checkpoint). Else the
    last epoch's full state, for resuming."""
    where = str(RunFolder(stage_dir).checkpoints)
    if not best:
        return ModelCheckpoint(dirpath=where, filename=LAST, save_top_k=1, enable_version_counter=False)
    return ModelCheckpoint(
        dirpath=where,
        filename=BEST,
        monitor=monitor,
        mode="max",
        save_top_k=1,
        save_weights_only=True,
        enable_version_counter=False,
    )


def build_trainer(cfg: DictConfig, stage: str, stage_dir: Path, loggers: list) -> tuple[pl.Trainer, ModelCheckpoint]:
    """The stage's Trainer and its best-checkpoint callback."""
    best = checkpoint_callback(stage_dir, best=True, monitor=f"val/{cfg.monitor}")
    last = checkpoint_callback(stage_dir, best=False)  # after the best one, whose state is saved inside
    extra = [instantiate(c) for c in cfg.callbacks.values()]  # the `callbacks` group, every entry
    interactive = sys.stdout.isatty() or any(isinstance(c, ProgressBar) for c in extra)
    trainer = pl.Trainer(
        max_epochs=stage_settings(cfg, stage)[1].max_epochs,
        logger=loggers or False,
        default_root_dir=str(stage_dir),
        callbacks=[best, last, StepSeed(cfg.seed), *extra] + ([] if interactive else [EpochLine(stage)]),
        plugins=[AtomicCheckpointIO()],
        **trainer_settings(cfg, interactive),
    )
    return trainer, best


def fit_step(trainer: pl.Trainer) -> int:
    """The optimiser steps taken so far: the step Lightning's logged rows carry."""
    return trainer.fit_loop.epoch_loop._batches_that_stepped


def continue_counts(trainer: pl.Trainer, fitted: pl.Trainer) -> None:
    """``trainer`` at the epoch and step ``fitted`` ended on, so that the rows it logs carry them
    (a stacked member's evaluation, as a run alone's evaluation follows its fit)."""
    trainer.fit_loop.epoch_progress.current.completed = fitted.current_epoch
    trainer.fit_loop.epoch_loop._batches_that_stepped = fit_step(fitted)


def evaluate_best(
    trainer: pl.Trainer,
    module: MomentRetrievalModule,
    dm: MomentDataModule,
    best: Path,
    stage_dir: Path,
    test: bool,
    loggers: list,
) -> dict[str, dict[str, Any]]:
    """Validate (and test) the best checkpoint; write its predictions, metrics and test timeline,
    and log the best figures to ``loggers`` (the stage's own: under ``fast_dev_run`` Lightning
    swaps the Trainer's for a dummy)."""
    folder = RunFolder(stage_dir)
    results: dict[str, dict[str, Any]] = {}
    for role in ["val", "test"] if test else ["val"]:
        run = trainer.validate if role == "val" else trainer.test
        run(module, datamodule=dm, ckpt_path=str(best), verbose=False, weights_only=True)
        results[role] = module.results[role]
        if is_rank_zero():
            folder.write_evaluation(role, module.predictions[role], module.results[role])
    if test and is_rank_zero():
        write_timelines(folder.timeline, module.predictions["test"], dm.splits["test"].data.queries, loggers)
    figures = {f"best/{role}/{k}": v for role, res in results.items() for k, v in logged_names(res["brief"]).items()}
    for lg in loggers:  # one row at the epoch the fit ended on, written now (no Trainer saves it later)
        lg.log_metrics({**figures, "epoch": trainer.current_epoch}, step=fit_step(trainer))
        lg.save()
    return results


def run_stage(
    cfg: DictConfig,
    stage: str,
    stage_dir: Path,
    job_dir: Path,
    init_weights: Path | None = None,
    resume: Path | None = None,
    test: bool = True,
    logged: dict[str, Any] | None = None,
) -> StageResult:
    """Train one stage in ``stage_dir`` (checkpoints/, predictions/, logs/) and evaluate its best
    checkpoint on val (and test). ``job_dir`` is the run's own folder; ``logged`` goes into the
    W&B run's config."""
    # loggers first: one that cannot be built (a missing package) stops the stage before its data is read
    loggers = stage_loggers(cfg, stage, stage_dir, job_dir, logged or {}, resumed=resume is not None)
    dm = build_datamodule(cfg, stage)
    dm.load()  # every input check happens here, before training starts
    # weights only: fresh optimiser, scheduler and epoch (official recipe); other DDP ranks receive
    # rank 0's weights when DDP wraps the model
    loads = init_weights is not None and resume is None and (is_rank_zero() or init_weights.is_file())
    module = build_module(cfg, init_weights if loads else None, stage)
    if loads:
        log.info("%s: initialised from %s", stage, init_weights)
    trainer, checkpoint = build_trainer(cfg, stage, stage_dir, loggers)
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=str(resume) if resume else None, weights_only=True)
        last = RunFolder(stage_dir).last_ckpt
        best = Path(checkpoint.best_model_path) if checkpoint.best_model_path else last
        if not best.is_file():  # fast_dev_run, max_epochs=0 and friends save nothing
            best = last
            trainer.save_checkpoint(best)
        results = evaluate_best(trainer, module, dm, best, stage_dir, test, loggers)
        run_id = wandb_run_id(loggers)
    finally:
        finish_wandb(loggers)
    return StageResult(best, results, run_id)


def init_checkpoint(cfg: DictConfig) -> Path | None:
    """``init_from``: the weights the main stage starts from, checked to exist (None: not set)."""
    if not cfg.init_from:
        return None
    init = Path(cfg.init_from)
    if not init.is_file():
        raise InputError("checkpoint to initialise from not found", init)
    return init


def pretrain_start(out_dir: Path, checkpoint: Path, key: str, wandb_run: str | None) -> dict[str, Any]:
    """Record the pre-training a run starts from (``pretrain.json``); what its run.json records."""
    if is_rank_zero():
        RunFolder(out_dir).write_pretrain_info({"checkpoint": str(checkpoint), "key": key, "wandb_run": wandb_run})
    return {"pretrain_checkpoint": str(checkpoint), "pretrain_key": key, "pretrain_wandb_run": wandb_run}


def results_table(results: dict[str, dict[str, Any]]) -> str:
    head = "| split | " + " | ".join(SHORT_NAMES[k] for k in BRIEF_KEYS) + " |"
    rows = [head, "|" + "---|" * (len(BRIEF_KEYS) + 1)]
    for role, res in results.items():
        rows.append(f"| {role} | " + " | ".join(f"{res['brief'][k]:.2f}" for k in BRIEF_KEYS) + " |")
    return "\n".join(rows)


def finish_run(
    cfg: DictConfig, out_dir: Path, result: StageResult, start: dict[str, Any], overrides: list[str] | None = None
) -> None:
    """A finished run's ``run.json`` and ``test_metrics.json`` (what ``amr report`` reads), and its
    results table in the log. ``overrides``: the job's, unless given."""
    layout = Layout(Path(cfg.data.root), cfg.data.name, cfg.data.feat_dir)
    overrides = job_overrides() if overrides is None else overrides
    folder = RunFolder(out_dir)
    folder.write_info(
        {
            "experiment": cfg.experiment_name,
            "system": system_name(cfg.experiment_name, overrides, sweep_keys()),
            "overrides": overrides,
            "seed": cfg.seed,
            "stage": MAIN_STAGE,
            **start,
            "annotations": {
                "val": str(layout.annotations(cfg.data.splits.val)),
                "test": str(layout.annotations(cfg.data.splits.test)),
            },
        }
    )
    if cfg.test:
        folder.write_test_metrics(result.results["test"])
    log.info(
        "\n%s (%s%s, checkpoint %s):\n%s\nrun folder: %s\n",
        cfg.experiment_name,
        "" if cfg.stacked_runs == 1 else f"seed {cfg.seed}, ",
        MAIN_STAGE,
        result.best_ckpt.name,
        results_table(result.results),
        out_dir.resolve(),
    )
