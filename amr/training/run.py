"""``amr-train``: one run = an optional pre-training stage, then the main (fine-tune) stage, then
test on the best checkpoint; or, with ``fit=false ckpt_path=PATH``, the test of a checkpoint alone.

The pre-training result is cached (``amr.training.pretrain_cache``), so sweeps that change only fine-tuning
settings train it once, in parallel jobs too.
"""

from __future__ import annotations

import copy
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, cast

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf, open_dict

from amr.checkpoints import Checkpoint, adopt
from amr.checkpoints import read as read_checkpoint
from amr.data.features import Encoder
from amr.errors import InputError, os_error_behind, os_error_line
from amr.inference.calibration import Calibrator, beside
from amr.inference.decoders import DecodeConfig
from amr.metrics.retrieval import SHORT_NAMES
from amr.model import retriever
from amr.results.run_folder import RunFolder
from amr.results.systems import key_root, override_key
from amr.runtime import is_rank_zero, tune_allocator
from amr.training.config import plain, register, validate
from amr.training.launch import CONF_DIR, FAILED, in_sweep, job_failed, preflight, refuse_taken, resume_checkpoint
from amr.training.loggers import finish_wandb, job_overrides, stage_loggers
from amr.training.pretrain_cache import CachedStage, fetch_or_train
from amr.training.stage import (
    MAIN_STAGE,
    PRETRAIN_STAGE,
    StageResult,
    build_datamodule,
    build_module,
    build_trainer,
    check_datasets,
    evaluate_best,
    finish_run,
    init_checkpoint,
    pretrain_start,
    run_stage,
)

log = logging.getLogger("amr.train")
BRIEF_KEY = {short: key for key, short in SHORT_NAMES.items()}
register()


def _pretrain(cfg: DictConfig, out_dir: Path) -> CachedStage:
    """Best pre-training checkpoint, from the cache or trained now (then cached). With
    ``reuse_pretrain=false`` the stage is trained inside the run folder and not cached."""

    def train_in(work: Path, resume: Path | None) -> tuple[Path, dict[str, Any], str | None]:
        r = run_stage(cfg, PRETRAIN_STAGE, work, out_dir, resume=resume, test=False)
        return r.best_ckpt, r.results["val"]["brief"], r.wandb_run

    if not cfg.reuse_pretrain:
        best, _, run_id = train_in(out_dir / PRETRAIN_STAGE, None)
        return CachedStage(best, "", run_id)
    return fetch_or_train(cfg, train_in)


def checkpoint_calibrator(cfg: DictConfig, ckpt: Checkpoint, decode_given: bool) -> Calibrator | None:
    """``fit=false``'s calibrator: ``calibrator=PATH``, none for ``calibrator=none``, else the one
    beside the checkpoint if any (said in the log). One fit for another decoder than a ``decode``
    given on the command line is refused."""
    if cfg.calibrator == "none":
        return None
    path = Path(cfg.calibrator) if cfg.calibrator else beside(ckpt.path)
    if cfg.calibrator is None and not path.is_file():
        return None
    cal = Calibrator.load(path)
    if decode_given and cal.decoder() != DecodeConfig(**plain(cfg.decode)):
        raise InputError(
            f"fit on decode={cal.decoder().name} with other settings than the decode given; "
            "leave decode out or set calibrator=none",
            path,
        )
    log.info(
        "fit=false: %s calibrator %s (%s)", cal.method, path, "given" if cfg.calibrator else "beside the checkpoint"
    )
    return cal


def as_the_checkpoint_says(cfg: DictConfig, ckpt: Checkpoint) -> tuple[DictConfig, Calibrator | None]:
    """The config a checkpoint is evaluated with: its own decoder and network settings (a
    checkpoint without a decoder: the official one; with a calibrator, the calibrator's decoder),
    unless the command line sets them, and its calibrator (:func:`checkpoint_calibrator`). Each
    choice that differs from the composed config is said in the log, and features other than the
    checkpoint was trained on."""
    given = {key_root(override_key(o)) for o in job_overrides()}
    cal = checkpoint_calibrator(cfg, ckpt, "decode" in given)
    decode = asdict(cal.decoder()) if cal is not None else ckpt.decode or asdict(DecodeConfig())
    stored = {"decode": decode, "model": ckpt.model_settings}
    trained_on = ckpt.features
    if trained_on and trained_on["feat_dir"] != cfg.data.feat_dir:
        log.info("fit=false: %s features (the checkpoint was trained on %s)", cfg.data.feat_dir, trained_on["feat_dir"])
    cfg = cast(DictConfig, copy.deepcopy(cfg))
    for key, value in stored.items():
        if key in given:
            log.info("fit=false: %s as the command line sets it: %s", key, plain(cfg[key]))
        elif value is not None and value != plain(cfg[key]):
            with open_dict(cfg):  # another network's settings replace the composed network's
                other = key == "model" and value.get("name") != cfg.model.get("name")
                cfg[key] = OmegaConf.create(value) if other else OmegaConf.merge(cfg[key], value)
            log.info("fit=false: %s as the checkpoint says: %s", key, value)
    return cfg, cal


def evaluate_checkpoint(cfg: DictConfig, ckpt: Path, out_dir: Path) -> StageResult:
    """``fit=false``: the configured data's val (and test) split through a checkpoint (with its own
    decoder, calibrator and network settings unless overridden), written as a training run writes
    its final evaluation."""
    cfg, calibrator = as_the_checkpoint_says(cfg, Checkpoint.read(ckpt))
    loggers = stage_loggers(cfg, MAIN_STAGE, out_dir, out_dir, {"evaluated_checkpoint": str(ckpt)})
    dm = build_datamodule(cfg, MAIN_STAGE)
    dm.load()
    module = build_module(cfg)
    module.calibrator = calibrator
    trainer, _ = build_trainer(cfg, MAIN_STAGE, out_dir, loggers)
    try:
        results = evaluate_best(trainer, module, dm, ckpt, out_dir, cfg.test, loggers)
    finally:
        finish_wandb(loggers)
    return StageResult(ckpt, results)


def _search_space() -> list[str]:
    """The keys a Hydra sweeper searches over (``hparams_search``), if any."""
    from hydra.core.hydra_config import HydraConfig

    try:
        params = HydraConfig.get().sweeper.get("params")
    except ValueError:  # composed without Hydra's main (tests, notebooks)
        return []
    return [str(k) for k in params] if params else []


def _resume_point(cfg: DictConfig, out_dir: Path) -> Path | None:
    """The checkpoint to resume from (``ckpt_path``), or None; refuses a folder that holds a run
    (other than the unfinished one resumed) and a checkpoint that cannot resume training."""
    resume = resume_checkpoint(cfg, out_dir)
    if resume is not None:
        if cfg.ckpt_path == "last" and not resume.is_file() and resume.parent.is_dir():
            raise InputError(
                f"no {resume.name}: the run stopped before its first epoch ended; start it again in a new folder, "
                f"or remove this one first (rm -r {out_dir})",
                resume.parent,
            )
        if cfg.ckpt_path == "last" and not resume.is_file() and out_dir.is_dir():
            raise InputError(
                f"no {RunFolder(out_dir).rel(resume)}: the run stopped before its main stage began (in pre-training); "
                "start it again in a new folder without ckpt_path: the pre-training resumes from its cache",
                out_dir,
            )
        if not resume.is_file():
            raise InputError("checkpoint to resume from not found", resume)
        if is_rank_zero():
            refuse_taken(out_dir, resume)
        state = read_checkpoint(resume)
        if "optimizer_states" not in state:
            raise InputError(
                "a weights-only checkpoint cannot resume training: start from its weights with "
                f"init_from={resume}, or evaluate it with fit=false ckpt_path={resume}",
                resume,
            )
        if cfg.stacked_runs == 1:  # resumed with other features or network: one line, not a shape error
            stored = Checkpoint(resume, state["state_dict"], state["hyper_parameters"])
            stored.check_network(retriever(cfg.model).name, "ckpt_path")
            stored.model(Encoder.of(cfg.features))
        own = RunFolder(out_dir)
        if resume.resolve() != own.last_ckpt.resolve():  # another folder's run, continued in this new one
            if cfg.stacked_runs > 1:
                raise InputError("a stacked run resumes in its own folder: hydra.run.dir=<it> ckpt_path=last", resume)
            log.info("resuming the run of %s in %s (that folder is only read)", resume, out_dir)
            resume = adopt(resume, own.checkpoints, state)
        return resume
    if not cfg.fit and not Path(cfg.ckpt_path).is_file():
        raise InputError("checkpoint to evaluate not found", cfg.ckpt_path)
    encoder = Encoder.of(cfg.features)
    if not cfg.fit:  # weights for other features, or not a checkpoint: one line before any data is read
        Checkpoint.read(cfg.ckpt_path).model(encoder)
    elif cfg.init_from and Path(cfg.init_from).is_file():
        start = Checkpoint.read(cfg.init_from)
        start.check_network(retriever(cfg.model).name, "init_from")
        start.model(encoder)
    if is_rank_zero():
        refuse_taken(out_dir, None)
    return None


def _main_stage(cfg: DictConfig, out_dir: Path, resume: Path | None) -> tuple[StageResult, dict[str, Any]]:
    """Pre-training (cached) when enabled, then the main stage; returns it and what it started from."""
    if not cfg.fit:
        return evaluate_checkpoint(cfg, Path(cfg.ckpt_path), out_dir), {"evaluated": str(cfg.ckpt_path)}
    init = init_checkpoint(cfg)
    start: dict[str, Any] = {}
    if init is not None:
        start = {"init_from": str(init)}
    elif cfg.pretrain.enabled:
        cached = _pretrain(cfg, out_dir)
        init = cached.checkpoint
        start = pretrain_start(out_dir, cached.checkpoint, cached.key, cached.wandb_run)
    result = run_stage(cfg, MAIN_STAGE, out_dir, out_dir, init_weights=init, resume=resume, test=cfg.test, logged=start)
    return result, start


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run the configured stages; returns the final stage's results ({"val": ..., "test": ...})."""
    validate(cfg, searched=_search_space())
    out_dir = Path(cfg.paths.output_dir)
    resume = _resume_point(cfg, out_dir)
    with _resuming(out_dir, resume is not None and is_rank_zero()):
        return _train(cfg, out_dir, resume)


@contextmanager
def _resuming(out_dir: Path, resuming: bool) -> Iterator[None]:
    """A resume holds its run folder's lock: a second resume of the same run at once is refused
    (both would train and log the same epochs)."""
    if not resuming:
        yield
        return
    from filelock import FileLock, Timeout

    lock = FileLock(str(RunFolder(out_dir).resume_lock))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise InputError("another process is resuming this run now", out_dir) from None
    try:
        yield
    finally:
        lock.release()


def _train(cfg: DictConfig, out_dir: Path, resume: Path | None) -> dict[str, Any]:
    if is_rank_zero():
        log.info("run folder: %s", out_dir.resolve())
        if cfg.print_config:
            log.info("config (resolved):\n%s", OmegaConf.to_yaml(cfg, resolve=True).rstrip())
    check_datasets(cfg)
    if cfg.stacked_runs > 1:
        from amr.training.stacked import train_stacked

        return train_stacked(cfg, out_dir, resume)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    result, start = _main_stage(cfg, out_dir, resume)
    if is_rank_zero():
        finish_run(cfg, out_dir, result, start)
    return result.results


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def _main(cfg: DictConfig) -> float | None:
    try:
        results = train(cfg)
    except Exception as e:
        cause = os_error_behind(e)  # a full disk or read-only folder, perhaps wrapped by torch
        expected = isinstance(e, (InputError, ValueError)) or cause is not None  # bad input or config: one line
        sweep = in_sweep()
        if os.environ.get("HYDRA_FULL_ERROR") == "1" or not (expected or sweep):
            raise
        if cause is not None:
            line = os_error_line(cause)
        else:
            line = str(e) if expected else f"{type(e).__name__}: {e}".splitlines()[0]
        if not sweep:
            print(f"error: {line}", file=sys.stderr)
            raise SystemExit(2) from None
        job_failed(line, sys.exc_info())  # type: ignore[arg-type]
        return None  # the sweep goes on; an optimising sweeper counts the trial as failed
    # objective for hparams_search: validation, never test
    return float(results["val"]["brief"][BRIEF_KEY[cfg.monitor]]) if "val" in results else None


def main() -> None:
    argv = sys.argv[1:]
    preflight(argv)
    tune_allocator()  # large activations reused from the heap instead of fresh pages each step
    _main()
    if FAILED:  # a sweep with failed jobs (each named at its end)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
