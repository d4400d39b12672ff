"""``amr-train``: one run = an optional pre-training stage, then the main (fine-tune) stage, then
test on the best checkpoint.

The pre-training result is cached under ``paths.pretrain_cache`` by a hash of everything that
affects it, so sweeps that change only fine-tuning settings train it once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint

from amr.augment.time_mask import TimeMaskConfig
from amr.checkpoints import load_weights
from amr.config import register, validate
from amr.data.datamodule import MomentDataModule
from amr.data.features import Layout
from amr.errors import InputError
from amr.io import write_json
from amr.lit_module import MomentRetrievalModule
from amr.metrics.predictions import write_metrics, write_predictions
from amr.metrics.retrieval import BRIEF_KEYS, SHORT_NAMES
from amr.report import write_timelines
from amr.runtime import tune_allocator
from amr.stage_logging import EpochLine, StepSeed, finish_wandb, job_overrides, stage_loggers

log = logging.getLogger("amr.train")
register()

# Trainer keys that change how a run is shown or stored, not its result: kept out of cache keys.
NON_RESULT_TRAINER_KEYS = {
    "enable_progress_bar",
    "log_every_n_steps",
    "enable_model_summary",
    "num_sanity_val_steps",
    "default_root_dir",
}


@dataclass
class StageResult:
    best_ckpt: Path
    results: dict[str, dict[str, Any]]


def is_rank_zero() -> bool:
    """Only global rank 0 writes files (DDP starts the same command once per process)."""
    from lightning_fabric.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def plain(node: Any) -> dict[str, Any]:
    """A resolved config node as a plain dict."""
    out = OmegaConf.to_container(node, resolve=True)
    assert isinstance(out, dict)
    return {str(k): v for k, v in out.items()}


def _stage_augment(cfg: DictConfig, stage: str) -> tuple[TimeMaskConfig | None, list[str]]:
    """The time mask (or None) and the caption-version pivots a stage trains with."""
    time_mask = TimeMaskConfig(**plain(cfg.augment.time_mask))
    bt = cfg.augment.backtranslation
    return (time_mask if time_mask.used_in(stage) else None), (list(bt.pivots) if stage in bt.stages else [])


def pretrain_key(cfg: DictConfig) -> str:
    """Hash of everything that affects the pre-training result."""
    trainer = {k: v for k, v in plain(cfg.trainer).items() if k not in NON_RESULT_TRAINER_KEYS}
    time_mask, pivots = _stage_augment(cfg, "pretrain")
    ident = {
        "data": OmegaConf.to_container(cfg.pretrain.data, resolve=True),
        # the eval batch counts too: with the official T2V mask, outputs depend on the batch
        "stage": {
            "epochs": cfg.pretrain.max_epochs,
            "batch_size": cfg.pretrain.batch_size,
            "eval_batch_size": cfg.pretrain.eval_batch_size,
        },
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "loss": OmegaConf.to_container(cfg.loss, resolve=True),
        "optim": OmegaConf.to_container(cfg.optim, resolve=True),
        "augment": {"time_mask": None if time_mask is None else [time_mask.p, time_mask.max_ratio], "pivots": pivots},
        "seed": cfg.seed,
        "trainer": trainer,
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _datamodule(cfg: DictConfig, stage: str, data_cfg: DictConfig, stage_cfg: DictConfig) -> MomentDataModule:
    time_mask, pivots = _stage_augment(cfg, stage)
    return MomentDataModule(
        data_cfg,
        batch_size=stage_cfg.batch_size,
        eval_batch_size=stage_cfg.eval_batch_size,
        cache_dir=cfg.paths.cache_dir,
        seed=cfg.seed,
        num_workers=cfg.num_workers,
        time_mask=time_mask,
        pivots=pivots,
    )


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
    interactive = sys.stdout.isatty()
    kwargs = {k: v for k, v in plain(cfg.trainer).items() if v is not None}
    trainer = pl.Trainer(
        max_epochs=stage_cfg.max_epochs,
        logger=loggers or False,
        default_root_dir=str(stage_dir),
        callbacks=[best, last, StepSeed(cfg.seed)] + ([] if interactive else [EpochLine(stage)]),
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
        run(module, datamodule=dm, ckpt_path=str(best), verbose=False)
        results[role] = module.results[role]
        if is_rank_zero():
            write_predictions(stage_dir / "predictions" / f"{role}_preds.jsonl", module.predictions[role])
            write_metrics(stage_dir / "predictions" / f"{role}_metrics.json", module.results[role])
    if test and is_rank_zero():
        timeline = stage_dir / "predictions" / "test_timeline.png"
        write_timelines(timeline, module.predictions["test"], dm.splits["test"].data.queries, loggers)
    for lg in loggers:
        for role, res in results.items():
            lg.log_metrics({f"best/{role}/{SHORT_NAMES[k]}": v for k, v in res["brief"].items()})
    return results


def run_stage(
    cfg: DictConfig,
    stage: str,
    data_cfg: DictConfig,
    stage_cfg: DictConfig,
    stage_dir: Path,
    init_weights: Path | None = None,
    resume: Path | None = None,
    test: bool = True,
) -> StageResult:
    """Train one stage in ``stage_dir`` (checkpoints/, predictions/, logs/) and evaluate its best
    checkpoint on val (and test)."""
    dm = _datamodule(cfg, stage, data_cfg, stage_cfg)
    dm.load()  # every input check happens here, before training starts
    module = MomentRetrievalModule(model=plain(cfg.model), loss=plain(cfg.loss), optim=plain(cfg.optim))
    if init_weights is not None and resume is None and (is_rank_zero() or init_weights.is_file()):
        # weights only: fresh optimiser, scheduler and epoch (official recipe); other DDP ranks
        # receive rank 0's weights when DDP wraps the model
        load_weights(module, init_weights)
        log.info("%s: initialised from %s", stage, init_weights)
    loggers = stage_loggers(cfg, stage, stage_dir)
    trainer, checkpoint = _trainer(cfg, stage, stage_cfg, stage_dir, loggers)
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=str(resume) if resume else None)
        last = stage_dir / "checkpoints" / "last.ckpt"
        best = Path(checkpoint.best_model_path) if checkpoint.best_model_path else last
        if not best.is_file():  # fast_dev_run, max_epochs=0 and friends save nothing
            best = last
            trainer.save_checkpoint(best)
        results = _evaluate_best(trainer, module, dm, best, stage_dir, test, loggers)
    finally:
        finish_wandb(loggers)
    return StageResult(best, results)


def _pretrain(cfg: DictConfig, out_dir: Path) -> Path:
    """Best pre-training checkpoint, from the cache or trained now (then cached atomically).
    With ``reuse_pretrain=false`` the stage is trained inside the run folder and not cached."""
    if not cfg.reuse_pretrain:
        return run_stage(cfg, "pretrain", cfg.pretrain.data, cfg.pretrain, out_dir / "pretrain", test=False).best_ckpt
    key = pretrain_key(cfg)
    cache = Path(cfg.paths.pretrain_cache)
    final = cache / key
    if (final / "best.ckpt").is_file():
        log.info("pretrain: reusing cached result %s", final)
        print(f"[pretrain] reusing cached stage {final}", flush=True)
        return final / "best.ckpt"
    work = cache / f"{key}.partial"
    resume = work / "checkpoints" / "last.ckpt"
    result = run_stage(
        cfg, "pretrain", cfg.pretrain.data, cfg.pretrain, work, test=False, resume=resume if resume.is_file() else None
    )
    if not is_rank_zero():
        return result.best_ckpt
    # the entry keeps the best weights only: last.ckpt (optimiser state for resuming) is spent
    os.replace(result.best_ckpt, work / "best.ckpt")
    shutil.rmtree(work / "checkpoints", ignore_errors=True)
    write_json(
        work / "stage.json",
        {"key": key, "val": result.results["val"]["brief"], "config": OmegaConf.to_container(cfg, resolve=True)},
    )
    if final.exists():  # a parallel job finished the same stage first: keep theirs
        shutil.rmtree(work, ignore_errors=True)
    else:
        os.rename(work, final)
    return final / "best.ckpt"


TAKEN = "run folder already holds a run; pick another hydra.run.dir, or resume it with ckpt_path=last"


def holds_run(out_dir: Path) -> bool:
    return (out_dir / "checkpoints").exists() or (out_dir / "test_metrics.json").exists()


def results_table(results: dict[str, dict[str, Any]]) -> str:
    head = "| split | " + " | ".join(SHORT_NAMES[k] for k in BRIEF_KEYS) + " |"
    rows = [head, "|" + "---|" * (len(BRIEF_KEYS) + 1)]
    for role, res in results.items():
        rows.append(f"| {role} | " + " | ".join(f"{res['brief'][k]:.2f}" for k in BRIEF_KEYS) + " |")
    return "\n".join(rows)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run the configured stages; returns the final stage's results ({"val": ..., "test": ...})."""
    validate(cfg)
    out_dir = Path(cfg.paths.output_dir)
    resume: Path | None = None
    if cfg.ckpt_path:
        resume = out_dir / "checkpoints" / "last.ckpt" if cfg.ckpt_path == "last" else Path(cfg.ckpt_path)
        if not resume.is_file():
            raise InputError("checkpoint to resume from not found", resume)
    elif is_rank_zero() and holds_run(out_dir):
        raise InputError(TAKEN, out_dir)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    init: Path | None = None
    if cfg.init_from:
        init = Path(cfg.init_from)
        if not init.is_file():
            raise InputError("checkpoint to initialise from not found", init)
    else:
        init = _pretrain(cfg, out_dir) if cfg.pretrain.enabled else None
    if init is not None and not cfg.init_from and is_rank_zero():
        write_json(out_dir / "pretrain.json", {"checkpoint": str(init), "key": pretrain_key(cfg)})
    stage = "finetune" if init is not None else "train"
    result = run_stage(cfg, stage, cfg.data, cfg.train, out_dir, init_weights=init, resume=resume, test=cfg.test)
    if not is_rank_zero():
        return result.results
    layout = Layout(Path(cfg.data.root), cfg.data.name, cfg.data.feat_dir)
    write_json(
        out_dir / "run.json",
        {
            "experiment": cfg.experiment_name,
            "overrides": job_overrides(),
            "seed": cfg.seed,
            "stage": stage,
            "annotations": {
                "val": str(layout.annotations(cfg.data.splits.val)),
                "test": str(layout.annotations(cfg.data.splits.test)),
            },
        },
    )
    if cfg.test:
        write_metrics(out_dir / "test_metrics.json", result.results["test"])
    print(
        f"\n{cfg.experiment_name} ({stage}, best checkpoint {result.best_ckpt.name}):\n"
        f"{results_table(result.results)}\n",
        flush=True,
    )
    return result.results


CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def _main(cfg: DictConfig) -> float | None:
    try:
        results = train(cfg)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    # objective for hparams_search: validation, never test
    return float(results["val"]["brief"]["MR-full-R1@0.7"]) if "val" in results else None


def _refuse_taken_run_dir(argv: list[str]) -> None:
    """Hydra writes ``.hydra/`` into the run folder before any code of ours runs: refuse an explicit
    ``hydra.run.dir`` that already holds a run (unless resuming) before it can touch anything."""
    if "-m" in argv or "--multirun" in argv or any(a.startswith("ckpt_path=") and a != "ckpt_path=null" for a in argv):
        return
    for a in argv:
        if a.startswith("hydra.run.dir="):
            out = Path(a.split("=", 1)[1])
            if holds_run(out):
                print(f"error: {InputError(TAKEN, out)}", file=sys.stderr)
                raise SystemExit(2)


def main() -> None:
    _refuse_taken_run_dir(sys.argv[1:])
    tune_allocator()  # large activations reused from the heap instead of fresh pages each step
    _main()


if __name__ == "__main__":
    main()
