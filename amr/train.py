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
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import Callback, ModelCheckpoint

from amr.config import register, validate
from amr.data.datamodule import MomentDataModule
from amr.data.dataset import TimeMaskConfig
from amr.data.features import Layout
from amr.errors import InputError
from amr.io import write_json
from amr.lit_module import LOG_NAMES, MomentRetrievalModule
from amr.metrics.predictions import write_metrics, write_predictions
from amr.metrics.retrieval import BRIEF_KEYS
from amr.report import write_timelines
from amr.runtime import tune_allocator

log = logging.getLogger("amr.train")
register()

# Trainer keys that change how a run is shown or stored, not its result: kept out of cache keys.
NON_RESULT_TRAINER_KEYS = {
    "enable_progress_bar",
    "log_every_n_steps",
    "enable_model_summary",
    "num_sanity_val_steps",
    "default_root_dir",
    "max_epochs",
}


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


@dataclass
class StageResult:
    best_ckpt: Path
    results: dict[str, dict[str, Any]]


def is_rank_zero() -> bool:
    """Only global rank 0 writes files (DDP starts the same command once per process)."""
    from lightning_fabric.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def _stage_augment(cfg: DictConfig, stage: str) -> tuple[TimeMaskConfig | None, list[str]]:
    tm = cfg.augment.time_mask
    time_mask = TimeMaskConfig(p=tm.p, max_ratio=tm.max_ratio) if stage in tm.stages and tm.p > 0 else None
    bt = cfg.augment.backtranslation
    tags = list(bt.pivots) if stage in bt.stages else []
    return time_mask, tags


def plain(node: Any) -> dict[str, Any]:
    """A resolved config node as a plain dict."""
    out = OmegaConf.to_container(node, resolve=True)
    assert isinstance(out, dict)
    return {str(k): v for k, v in out.items()}


def _epochs(cfg: DictConfig, stage_cfg: DictConfig) -> int:
    override = cfg.trainer.get("max_epochs")
    return int(override) if override is not None else int(stage_cfg.max_epochs)


def pretrain_key(cfg: DictConfig) -> str:
    """Hash of everything that affects the pre-training result."""
    trainer = {k: v for k, v in plain(cfg.trainer).items() if k not in NON_RESULT_TRAINER_KEYS}
    time_mask, tags = _stage_augment(cfg, "pretrain")
    ident = {
        "data": OmegaConf.to_container(cfg.pretrain.data, resolve=True),
        # the eval batch counts too: with the official T2V mask, outputs depend on the batch
        "stage": {
            "epochs": _epochs(cfg, cfg.pretrain),
            "batch_size": cfg.pretrain.batch_size,
            "eval_batch_size": cfg.pretrain.eval_batch_size,
        },
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "loss": OmegaConf.to_container(cfg.loss, resolve=True),
        "optim": OmegaConf.to_container(cfg.optim, resolve=True),
        "augment": {"time_mask": None if time_mask is None else [time_mask.p, time_mask.max_ratio], "tags": tags},
        "seed": cfg.seed,
        "trainer": trainer,
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _loggers(cfg: DictConfig, stage: str, out_dir: Path) -> list:
    kind = cfg.logger.kind
    if kind == "none":
        return []
    if kind == "csv":
        return [pl.loggers.CSVLogger(save_dir=str(out_dir), name="logs", version=stage)]
    if kind == "tensorboard":
        return [pl.loggers.TensorBoardLogger(save_dir=str(out_dir), name="logs", version=stage)]
    os.environ.setdefault("WANDB_MODE", cfg.logger.mode)
    overrides = _job_overrides()
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


def _job_overrides() -> list[str]:
    try:
        return [o for o in HydraConfig.get().overrides.task if not o.startswith(("hydra.", "paths."))]
    except ValueError:
        return []


def _finish_wandb(loggers: list) -> None:
    if any(isinstance(lg, pl.loggers.WandbLogger) for lg in loggers):
        import wandb

        wandb.finish()


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
    time_mask, tags = _stage_augment(cfg, stage)
    dm = MomentDataModule(
        data_cfg,
        batch_size=stage_cfg.batch_size,
        eval_batch_size=stage_cfg.eval_batch_size,
        cache_dir=cfg.paths.cache_dir,
        seed=cfg.seed,
        num_workers=cfg.num_workers,
        time_mask=time_mask,
        caption_tags=tags,
    )
    dm.load()  # every input check happens here, before training starts
    module = MomentRetrievalModule(
        model=plain(cfg.model),
        loss=plain(cfg.loss),
        optim=plain(cfg.optim),
    )
    if init_weights is not None and resume is None and (is_rank_zero() or init_weights.is_file()):
        # (other DDP ranks receive rank 0's weights when DDP wraps the model)
        state = torch.load(init_weights, map_location="cpu", weights_only=False)["state_dict"]
        module.load_state_dict(state)  # weights only: fresh optimiser, scheduler and epoch (official recipe)
        log.info("%s: initialised from %s", stage, init_weights)
    ckpt_dir = stage_dir / "checkpoints"
    # Best: replaced only on strict improvement, so it is the first epoch reaching the max (official).
    checkpoint = ModelCheckpoint(
        dirpath=str(ckpt_dir),
        filename="best",
        monitor="val/R1@0.7",
        mode="max",
        save_top_k=1,
        enable_version_counter=False,
    )
    # Last: every epoch, after the best one (its state is saved inside), for resuming.
    last = ModelCheckpoint(dirpath=str(ckpt_dir), filename="last", save_top_k=1, enable_version_counter=False)
    interactive = sys.stdout.isatty()
    trainer_kwargs = {k: v for k, v in plain(cfg.trainer).items() if v is not None and k != "max_epochs"}
    loggers = _loggers(cfg, stage, stage_dir)
    trainer = pl.Trainer(
        max_epochs=_epochs(cfg, stage_cfg),
        logger=loggers or False,
        default_root_dir=str(stage_dir),
        callbacks=[checkpoint, last, StepSeed(cfg.seed)] + ([] if interactive else [EpochLine(stage)]),
        enable_progress_bar=trainer_kwargs.pop("enable_progress_bar", interactive),
        **trainer_kwargs,
    )
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=str(resume) if resume else None)
        best = Path(checkpoint.best_model_path) if checkpoint.best_model_path else ckpt_dir / "last.ckpt"
        if not best.is_file():  # fast_dev_run and friends save nothing
            best = ckpt_dir / "last.ckpt"
            trainer.save_checkpoint(best)
        results: dict[str, dict[str, Any]] = {}
        roles = ["val", "test"] if test else ["val"]
        for role in roles:
            run = trainer.validate if role == "val" else trainer.test
            run(module, datamodule=dm, ckpt_path=str(best), verbose=False)
            results[role] = module.results[role]
            if is_rank_zero():
                write_predictions(stage_dir / "predictions" / f"{role}_preds.jsonl", module.predictions[role])
                write_metrics(stage_dir / "predictions" / f"{role}_metrics.json", module.results[role])
        if test and is_rank_zero():
            write_timelines(
                stage_dir / "predictions" / "test_timeline.png",
                module.predictions["test"],
                dm.splits["test"].data.queries,
                loggers,
            )
        for lg in loggers:
            for role, res in results.items():
                lg.log_metrics({f"best/{role}/{LOG_NAMES[k]}": v for k, v in res["brief"].items()})
    finally:
        _finish_wandb(loggers)
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
    shutil.copy2(result.best_ckpt, work / "best.ckpt")
    write_json(
        work / "stage.json",
        {"key": key, "val": result.results["val"]["brief"], "config": OmegaConf.to_container(cfg, resolve=True)},
    )
    if final.exists():  # a parallel job finished the same stage first: keep theirs
        shutil.rmtree(work, ignore_errors=True)
    else:
        os.rename(work, final)
    return final / "best.ckpt"


def results_table(results: dict[str, dict[str, Any]]) -> str:
    head = "| split | " + " | ".join(LOG_NAMES[k] for k in BRIEF_KEYS) + " |"
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
    elif is_rank_zero() and ((out_dir / "checkpoints").exists() or (out_dir / "test_metrics.json").exists()):
        raise InputError(
            "run folder already holds a run; pick another hydra.run.dir, or resume it with ckpt_path=last", out_dir
        )
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
            "overrides": _job_overrides(),
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
            if (out / "checkpoints").exists() or (out / "test_metrics.json").exists():
                print(
                    f"error: {out}: run folder already holds a run; pick another hydra.run.dir, or resume it "
                    "with ckpt_path=last",
                    file=sys.stderr,
                )
                raise SystemExit(2)


def main() -> None:
    _refuse_taken_run_dir(sys.argv[1:])
    tune_allocator()  # large activations reused from the heap instead of fresh pages each step
    _main()


if __name__ == "__main__":
    main()
