"""``amr-train``: one run = an optional pre-training stage, then the main (fine-tune) stage, then
test on the best checkpoint; or, with ``fit=false ckpt_path=PATH``, the test of a checkpoint alone.

The pre-training result is cached (``amr.pretrain_cache``), so sweeps that change only fine-tuning
settings train it once, in parallel jobs too.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig
from pytorch_lightning.callbacks import ModelCheckpoint, ProgressBar

from amr.checkpoints import AtomicCheckpointIO, load_weights
from amr.config import plain, register, stage_augment, validate
from amr.data.datamodule import MomentDataModule
from amr.data.features import Layout
from amr.errors import InputError, os_error_line
from amr.io import write_json
from amr.launch import CONF_DIR, TAKEN, holds_run, preflight
from amr.lit_module import MomentRetrievalModule
from amr.metrics.predictions import write_metrics, write_predictions
from amr.metrics.retrieval import BRIEF_KEYS, SHORT_NAMES, logged_names
from amr.pretrain_cache import CachedStage, fetch_or_train, is_rank_zero
from amr.report import write_timelines
from amr.runs import sweep_keys, system_name
from amr.runtime import tune_allocator
from amr.stage_logging import (
    EpochLine,
    StepSeed,
    finish_wandb,
    first_stage_of_process,
    job_overrides,
    stage_loggers,
    wandb_run_id,
)

log = logging.getLogger("amr.train")
register()
MAIN_STAGE = "finetune"  # the main stage's name, with or without a pre-training stage before it


@dataclass
class StageResult:
    best_ckpt: Path
    results: dict[str, dict[str, Any]]
    wandb_run: str | None = None


def _datamodule(cfg: DictConfig, stage: str, data_cfg: DictConfig, stage_cfg: DictConfig) -> MomentDataModule:
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
    )


def _module(cfg: DictConfig) -> MomentRetrievalModule:
    """The training module of this config: the network, criterion and optimiser settings; the
    network compiled (``compile=MODE``, one shape per split with ``fixed_shapes``) when set."""
    module = MomentRetrievalModule(
        model=plain(cfg.model), loss=plain(cfg.loss), optim=plain(cfg.optim), decode=plain(cfg.decode)
    )
    if cfg.get("compile"):
        module.model.compile(mode=cfg.compile, dynamic=False)  # in place: parameter names unchanged
    return module


def _trainer(
    cfg: DictConfig, stage: str, stage_cfg: DictConfig, stage_dir: Path, loggers: list
) -> tuple[pl.Trainer, ModelCheckpoint]:
    """The stage's Trainer and its best-checkpoint callback."""
    ckpt_dir = stage_dir / "checkpoints"
    # Best: weights only, replaced only on strict improvement, so it is the first epoch reaching the
    # maximum (as the official code selects its checkpoint).
    best = ModelCheckpoint(
        dirpath=str(ckpt_dir),
        filename="best",
        monitor="val/R1@0.7",
        mode="max",
        save_top_k=1,
        save_weights_only=True,
        enable_version_counter=False,
    )
    # Last: every epoch, after the best one (whose state is saved inside), for resuming.
    last = ModelCheckpoint(dirpath=str(ckpt_dir), filename="last", save_top_k=1, enable_version_counter=False)
    extra = [instantiate(c) for c in cfg.callbacks.values()]  # the `callbacks` group, every entry
    bar = any(isinstance(c, ProgressBar) for c in extra)
    interactive = sys.stdout.isatty() or bar
    kwargs = {k: v for k, v in plain(cfg.trainer).items() if v is not None}
    kwargs.setdefault("enable_model_summary", first_stage_of_process())
    trainer = pl.Trainer(
        max_epochs=stage_cfg.max_epochs,
        logger=loggers or False,
        default_root_dir=str(stage_dir),
        callbacks=[best, last, StepSeed(cfg.seed), *extra] + ([] if interactive else [EpochLine(stage)]),
        plugins=[AtomicCheckpointIO()],
        enable_progress_bar=kwargs.pop("enable_progress_bar", interactive),
        **kwargs,
    )
    return trainer, best


def _evaluate_best(
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
    results: dict[str, dict[str, Any]] = {}
    for role in ["val", "test"] if test else ["val"]:
        run = trainer.validate if role == "val" else trainer.test
        run(module, datamodule=dm, ckpt_path=str(best), verbose=False, weights_only=True)
        results[role] = module.results[role]
        if is_rank_zero():
            write_predictions(stage_dir / "predictions" / f"{role}_preds.jsonl", module.predictions[role])
            write_metrics(stage_dir / "predictions" / f"{role}_metrics.json", module.results[role])
    if test and is_rank_zero():
        timeline = stage_dir / "predictions" / "test_timeline.png"
        write_timelines(timeline, module.predictions["test"], dm.splits["test"].data.queries, loggers)
    figures = {f"best/{role}/{k}": v for role, res in results.items() for k, v in logged_names(res["brief"]).items()}
    step = trainer.fit_loop.epoch_loop._batches_that_stepped  # the step the evaluation rows carry
    for lg in loggers:  # one row at the epoch the fit ended on, written now (no Trainer saves it later)
        lg.log_metrics({**figures, "epoch": trainer.current_epoch}, step=step)
        lg.save()
    return results


def run_stage(
    cfg: DictConfig,
    stage: str,
    data_cfg: DictConfig,
    stage_cfg: DictConfig,
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
    dm = _datamodule(cfg, stage, data_cfg, stage_cfg)
    dm.load()  # every input check happens here, before training starts
    module = _module(cfg)
    if init_weights is not None and resume is None and (is_rank_zero() or init_weights.is_file()):
        # weights only: fresh optimiser, scheduler and epoch (official recipe); other DDP ranks
        # receive rank 0's weights when DDP wraps the model
        load_weights(module, init_weights)
        log.info("%s: initialised from %s", stage, init_weights)
    loggers = stage_loggers(cfg, stage, stage_dir, job_dir, logged or {}, resumed=resume is not None)
    trainer, checkpoint = _trainer(cfg, stage, stage_cfg, stage_dir, loggers)
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=str(resume) if resume else None, weights_only=True)
        last = stage_dir / "checkpoints" / "last.ckpt"
        best = Path(checkpoint.best_model_path) if checkpoint.best_model_path else last
        if not best.is_file():  # fast_dev_run, max_epochs=0 and friends save nothing
            best = last
            trainer.save_checkpoint(best)
        results = _evaluate_best(trainer, module, dm, best, stage_dir, test, loggers)
        run_id = wandb_run_id(loggers)
    finally:
        finish_wandb(loggers)
    return StageResult(best, results, run_id)


def _pretrain(cfg: DictConfig, out_dir: Path) -> CachedStage:
    """Best pre-training checkpoint, from the cache or trained now (then cached). With
    ``reuse_pretrain=false`` the stage is trained inside the run folder and not cached."""

    def train_in(work: Path, resume: Path | None) -> tuple[Path, dict[str, Any], str | None]:
        r = run_stage(cfg, "pretrain", cfg.pretrain.data, cfg.pretrain, work, out_dir, resume=resume, test=False)
        return r.best_ckpt, r.results["val"]["brief"], r.wandb_run

    if not cfg.reuse_pretrain:
        best, _, run_id = train_in(out_dir / "pretrain", None)
        return CachedStage(best, "", run_id)
    return fetch_or_train(cfg, train_in)


def evaluate_checkpoint(cfg: DictConfig, ckpt: Path, out_dir: Path) -> StageResult:
    """``fit=false``: the configured data's val (and test) split through a checkpoint, written as a
    training run writes its final evaluation."""
    dm = _datamodule(cfg, MAIN_STAGE, cfg.data, cfg.train)
    dm.load()
    module = _module(cfg)
    loggers = stage_loggers(cfg, MAIN_STAGE, out_dir, out_dir, {"evaluated_checkpoint": str(ckpt)})
    trainer, _ = _trainer(cfg, MAIN_STAGE, cfg.train, out_dir, loggers)
    try:
        results = _evaluate_best(trainer, module, dm, ckpt, out_dir, cfg.test, loggers)
    finally:
        finish_wandb(loggers)
    return StageResult(ckpt, results)


def results_table(results: dict[str, dict[str, Any]]) -> str:
    head = "| split | " + " | ".join(SHORT_NAMES[k] for k in BRIEF_KEYS) + " |"
    rows = [head, "|" + "---|" * (len(BRIEF_KEYS) + 1)]
    for role, res in results.items():
        rows.append(f"| {role} | " + " | ".join(f"{res['brief'][k]:.2f}" for k in BRIEF_KEYS) + " |")
    return "\n".join(rows)


def _search_space() -> list[str]:
    """The keys a Hydra sweeper searches over (``hparams_search``), if any."""
    from hydra.core.hydra_config import HydraConfig

    try:
        params = HydraConfig.get().sweeper.get("params")
    except ValueError:  # composed without Hydra's main (tests, notebooks)
        return []
    return [str(k) for k in params] if params else []


def _resume_point(cfg: DictConfig, out_dir: Path) -> Path | None:
    """The checkpoint to resume from (``ckpt_path``), or None; refuses a folder that holds a run."""
    if cfg.fit and cfg.ckpt_path:
        resume = out_dir / "checkpoints" / "last.ckpt" if cfg.ckpt_path == "last" else Path(cfg.ckpt_path)
        if cfg.ckpt_path == "last" and not resume.is_file() and resume.parent.is_dir():
            raise InputError(
                f"no last.ckpt: the run stopped before its first epoch ended; start it again in a new folder, "
                f"or remove this one first (rm -r {out_dir})",
                resume.parent,
            )
        if not resume.is_file():
            raise InputError("checkpoint to resume from not found", resume)
        return resume
    if not cfg.fit and not Path(cfg.ckpt_path).is_file():
        raise InputError("checkpoint to evaluate not found", cfg.ckpt_path)
    if is_rank_zero() and holds_run(out_dir):
        raise InputError(TAKEN, out_dir)
    return None


def _main_stage(cfg: DictConfig, out_dir: Path, resume: Path | None) -> tuple[StageResult, dict[str, Any]]:
    """Pre-training (cached) when enabled, then the main stage; returns it and what it started from."""
    if not cfg.fit:
        return evaluate_checkpoint(cfg, Path(cfg.ckpt_path), out_dir), {"evaluated": str(cfg.ckpt_path)}
    init: Path | None = None
    start: dict[str, Any] = {}
    if cfg.init_from:
        init = Path(cfg.init_from)
        if not init.is_file():
            raise InputError("checkpoint to initialise from not found", init)
        start = {"init_from": str(init)}
    elif cfg.pretrain.enabled:
        cached = _pretrain(cfg, out_dir)
        init = cached.checkpoint
        start = {"pretrain_checkpoint": str(init), "pretrain_key": cached.key, "pretrain_wandb_run": cached.wandb_run}
        if is_rank_zero():
            write_json(
                out_dir / "pretrain.json", {"checkpoint": str(init), "key": cached.key, "wandb_run": cached.wandb_run}
            )
    result = run_stage(
        cfg,
        MAIN_STAGE,
        cfg.data,
        cfg.train,
        out_dir,
        out_dir,
        init_weights=init,
        resume=resume,
        test=cfg.test,
        logged=start,
    )
    return result, start


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run the configured stages; returns the final stage's results ({"val": ..., "test": ...})."""
    validate(cfg, searched=_search_space())
    out_dir = Path(cfg.paths.output_dir)
    resume = _resume_point(cfg, out_dir)
    if cfg.stacked_runs > 1:
        from amr.train_stacked import train_stacked

        return train_stacked(cfg, out_dir, resume)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    result, start = _main_stage(cfg, out_dir, resume)
    if is_rank_zero():
        finish_run(cfg, out_dir, result, start)
    return result.results


def finish_run(
    cfg: DictConfig, out_dir: Path, result: StageResult, start: dict[str, Any], overrides: list[str] | None = None
) -> None:
    """A finished run's ``run.json`` and ``test_metrics.json`` (what ``amr report`` reads), and its
    results table in the log. ``overrides``: the job's, unless given."""
    layout = Layout(Path(cfg.data.root), cfg.data.name, cfg.data.feat_dir)
    overrides = job_overrides() if overrides is None else overrides
    write_json(
        out_dir / "run.json",
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
        },
    )
    if cfg.test:
        write_metrics(out_dir / "test_metrics.json", result.results["test"])
    log.info(
        "\n%s (%s%s, checkpoint %s):\n%s\n",
        cfg.experiment_name,
        "" if cfg.stacked_runs == 1 else f"seed {cfg.seed}, ",
        MAIN_STAGE,
        result.best_ckpt.name,
        results_table(result.results),
    )


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def _main(cfg: DictConfig) -> float | None:
    try:
        results = train(cfg)
    except (InputError, ValueError, OSError) as e:  # bad input or config: one line (HYDRA_FULL_ERROR=1: traceback)
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {os_error_line(e) if isinstance(e, OSError) else e}", file=sys.stderr)
        raise SystemExit(2) from None
    # objective for hparams_search: validation, never test
    return float(results["val"]["brief"]["MR-full-R1@0.7"]) if "val" in results else None


def main() -> None:
    argv = sys.argv[1:]
    preflight(argv)
    tune_allocator()  # large activations reused from the heap instead of fresh pages each step
    _main()


if __name__ == "__main__":
    main()
