"""``amr-train stacked_runs=N``: the runs of seeds ``seed .. seed + N - 1`` of one system, trained as
one stacked model (:mod:`amr.training.stacked_module`) and written as N ordinary run folders ``<run>/seed=<s>/``
(checkpoints, predictions, logs, ``run.json``, ``test_metrics.json``) that ``amr report`` reads
as N runs. ``<run>/checkpoints/last.ckpt`` holds the stacked state (``ckpt_path=last`` resumes
it). A pre-training stage is fetched from the cache, or trained, per member, as a run alone does.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf, open_dict

from amr.checkpoints import AtomicCheckpointIO
from amr.errors import InputError
from amr.results.run_folder import RunFolder
from amr.results.systems import override_key
from amr.training.launch import TAKEN
from amr.training.loggers import EPOCH_LINE, StepSeed, finish_wandb, job_overrides, stage_loggers, wandb_run_id
from amr.training.pretrain_cache import CachedStage, fetch_or_train_many
from amr.training.stacked_module import StackedDataModule, StackedModule, write_member_weights
from amr.training.stage import (
    MAIN_STAGE,
    PRETRAIN_STAGE,
    StageResult,
    build_datamodule,
    build_module,
    build_trainer,
    checkpoint_callback,
    continue_counts,
    evaluate_best,
    finish_run,
    init_checkpoint,
    pretrain_start,
    stage_settings,
    trainer_settings,
)

log = logging.getLogger("amr.train")


def member_configs(cfg: DictConfig, out_dir: Path) -> list[DictConfig]:
    """Member m: the same config with ``seed + m``, writing to ``<run>/seed=<seed + m>``."""
    members = []
    for m in range(cfg.stacked_runs):
        c = cast(DictConfig, OmegaConf.create(OmegaConf.to_container(cfg, resolve=True)))
        with open_dict(c):
            c.seed = cfg.seed + m
            c.paths.output_dir = str(RunFolder(out_dir).member(cfg.seed + m).path)
        members.append(c)
    return members


def member_overrides(c: DictConfig) -> list[str]:
    """The job's overrides that train member ``c`` alone: its seed, no ``stacked_runs``."""
    others = [o for o in job_overrides() if override_key(o) not in ("seed", "stacked_runs")]
    return [*others, f"seed={c.seed}"]


def _stacked_pretrain(cfg: DictConfig, cfgs: list[DictConfig], out_dir: Path) -> list[CachedStage]:
    """Each member's pre-training: from the cache, the missing ones trained stacked (then cached);
    with ``reuse_pretrain=false`` all trained stacked in the run folders, not cached."""

    def train_stages(
        todo: list[DictConfig], works: list[Path], shared: Path, resume: Path | None
    ) -> list[tuple[Path, dict[str, Any], str | None]]:
        jobs = [Path(c.paths.output_dir) for c in todo]
        plan = StackedStage(PRETRAIN_STAGE, works, jobs, [None] * len(todo), [{}] * len(todo), shared, resume, False)
        return [(r.best_ckpt, r.results["val"]["brief"], r.wandb_run) for r in run_stacked_stage(cfg, todo, plan)]

    if not cfg.reuse_pretrain:
        works = [Path(c.paths.output_dir) / PRETRAIN_STAGE for c in cfgs]
        done = train_stages(cfgs, works, out_dir / PRETRAIN_STAGE, None)
        return [CachedStage(best, "", run_id) for best, _, run_id in done]
    return fetch_or_train_many(cfgs, train_stages)


def _start_points(cfg: DictConfig, cfgs: list[DictConfig], out_dir: Path) -> list[tuple[Path | None, dict[str, Any]]]:
    """Each member's initial weights (``init_from``, or its pre-training) and what its run records."""
    init = init_checkpoint(cfg)
    if init is not None:
        return [(init, {"init_from": str(init)})] * len(cfgs)
    if not cfg.pretrain.enabled:
        return [(None, {})] * len(cfgs)
    return [
        (cached.checkpoint, pretrain_start(Path(c.paths.output_dir), cached.checkpoint, cached.key, cached.wandb_run))
        for c, cached in zip(cfgs, _stacked_pretrain(cfg, cfgs, out_dir), strict=True)
    ]


def _stacked_trainer(cfg: DictConfig, out_dir: Path, max_epochs: int) -> pl.Trainer:
    """The Trainer of the stacked state: its last checkpoint for resuming; members log their own rows."""
    return pl.Trainer(
        max_epochs=max_epochs,
        logger=False,
        default_root_dir=str(out_dir),
        callbacks=[checkpoint_callback(out_dir, best=False), StepSeed(cfg.seed)],
        plugins=[AtomicCheckpointIO()],
        **trainer_settings(cfg, sys.stdout.isatty()),
    )


def _member_loggers(c: DictConfig, plan: StackedStage, m: int, resumed: bool, wandb: bool) -> list:
    """Member m's CSV/TensorBoard loggers (``wandb=False``), or its W&B logger alone."""
    resumed = resumed and not wandb
    overrides = member_overrides(c)
    return stage_loggers(c, plan.stage, plan.dirs[m], plan.job_dirs[m], plan.logged[m], resumed, overrides, wandb)


@dataclass
class StackedStage:
    """One stage of N members: where each writes, what it starts from, and the stacked state."""

    stage: str  # pretrain | finetune
    dirs: list[Path]  # each member's stage folder (checkpoints/, predictions/, logs/)
    job_dirs: list[Path]  # each member's run folder (W&B writes there)
    inits: list[Path | None]  # initial weights, or None: the seed's initialisation
    logged: list[dict[str, Any]]  # extra W&B config per member
    stacked_dir: Path  # checkpoints/last.ckpt of the stacked state goes below it
    resume: Path | None  # a stacked last.ckpt to resume from
    test: bool


def _members(cfgs: list[DictConfig], plan: StackedStage) -> tuple[list, list]:
    """Each member's datamodule and module, built as a run alone builds them under its seed."""
    dms, modules = [], []
    for c, init in zip(cfgs, plan.inits, strict=True):
        pl.seed_everything(c.seed, workers=True, verbose=False)  # a member's initial weights: its seed's
        dm = build_datamodule(c, plan.stage)
        dm.load()
        dms.append(dm)
        modules.append(build_module(c, init if plan.resume is None else None, plan.stage))
    for dm in dms[1:]:
        dm.share_device_arrays(dms[0])
    return dms, modules


def run_stacked_stage(cfg: DictConfig, cfgs: list[DictConfig], plan: StackedStage) -> list[StageResult]:
    """Train one stage of every member as one, then evaluate each member's best checkpoint."""
    dms, modules = _members(cfgs, plan)
    dirs = plan.dirs
    loggers = [_member_loggers(c, plan, m, plan.resume is not None, wandb=False) for m, c in enumerate(cfgs)]

    def on_best(m: int, epoch: int) -> None:
        folder = RunFolder(dirs[m])
        folder.checkpoints.mkdir(parents=True, exist_ok=True)
        write_member_weights(modules[m], folder.best_ckpt)

    def on_log(m: int, values: dict[str, float]) -> None:
        for lg in loggers[m]:
            lg.log_metrics(values, step=stacked.history[m][-1][0])
            lg.save()  # written as they come (no Trainer saves these loggers during the fit)
        shown = " ".join(f"{k}={v:.4g}" for k, v in values.items() if k in EPOCH_LINE)
        log.info("[%s seed=%d] epoch %d %s", plan.stage, cfgs[m].seed, stacked.current_epoch + 1, shown)

    stacked = StackedModule(modules, [c.seed for c in cfgs], on_best, on_log, f"val/{cfg.monitor}")
    trainer = _stacked_trainer(cfg, plan.stacked_dir, stage_settings(cfg, plan.stage)[1].max_epochs)
    resume = str(plan.resume) if plan.resume else None
    trainer.fit(stacked, datamodule=StackedDataModule(dms), ckpt_path=resume, weights_only=True)
    stacked.sync_members()
    results = []
    for m, c in enumerate(cfgs):
        best = RunFolder(dirs[m]).best_ckpt
        if not best.is_file():  # no validation ran (fast_dev_run, max_epochs=0): the last weights
            on_best(m, trainer.current_epoch)
        lgs = loggers[m] + _member_loggers(c, plan, m, False, wandb=True)
        try:
            for lg in lgs[len(loggers[m]) :]:  # W&B: the epochs' rows, written now
                for step, values in stacked.history[m]:
                    lg.log_metrics(values, step=step)
            member_trainer, _ = build_trainer(c, plan.stage, dirs[m], lgs)
            continue_counts(member_trainer, trainer)
            res = evaluate_best(member_trainer, modules[m], dms[m], best, dirs[m], plan.test, lgs)
            results.append(StageResult(best, res, wandb_run_id(lgs)))
        finally:
            finish_wandb(lgs)
    return results


def train_stacked(cfg: DictConfig, out_dir: Path, resume: Path | None) -> dict[str, Any]:
    """Train the N members; returns the first member's results (``seed``'s, as a run alone would)."""
    cfgs = member_configs(cfg, out_dir)
    if resume is None:
        for c in cfgs:
            if RunFolder(Path(c.paths.output_dir)).holds_run():
                raise InputError(TAKEN, c.paths.output_dir)
    starts = _start_points(cfg, cfgs, out_dir)
    dirs = [Path(c.paths.output_dir) for c in cfgs]
    plan = StackedStage(
        MAIN_STAGE, dirs, dirs, [i for i, _ in starts], [s for _, s in starts], out_dir, resume, cfg.test
    )
    results = run_stacked_stage(cfg, cfgs, plan)
    for c, res, (_, start) in zip(cfgs, results, starts, strict=True):
        start = {**start, "stacked": {"runs": cfg.stacked_runs, "folder": str(out_dir)}}  # where it was trained
        finish_run(c, Path(c.paths.output_dir), res, start, overrides=member_overrides(c))
    return results[0].results
