"""The pre-training cache: a stage's result is stored under ``paths.pretrain_cache/<key>`` by a hash
of everything that affects it, so the jobs of a sweep that need the same pre-training train it
once. Jobs in parallel (joblib, submitit, several shells or nodes on one filesystem) take a file
lock per key: one trains, the others wait and then reuse its result. The lock is the operating
system's (``filelock``): a crashed holder releases it, so nobody waits forever, and the next job
resumes the crashed one's ``<key>.partial`` from its last checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout
from omegaconf import DictConfig, OmegaConf

from amr.checkpoints import read
from amr.data.features import Encoder
from amr.io import write_json
from amr.model.registry import DEFAULT as DEFAULT_MODEL
from amr.results.run_folder import RunFolder
from amr.runtime import is_rank_zero
from amr.training.config import plain, stage_augment

log = logging.getLogger("amr.train")

# Trainer keys that change how a run is shown or stored, not its result: kept out of cache keys.
NON_RESULT_TRAINER_KEYS = {
    "enable_progress_bar",
    "log_every_n_steps",
    "enable_model_summary",
    "num_sanity_val_steps",
    "default_root_dir",
}


@dataclass
class CachedStage:
    checkpoint: Path  # best.ckpt of the stage
    key: str
    wandb_run: str | None  # the W&B run that trained it, when one did


def _data_identity(data: dict[str, Any]) -> dict[str, Any]:
    """The data settings that make a pre-training: ``verify`` is a check only, and a synthetic set's
    ``root`` is ``data.root`` again (left out so that keys stay as they were)."""
    out = {k: v for k, v in data.items() if k != "verify"}
    if isinstance(out.get("synthetic"), dict):
        out["synthetic"] = {k: v for k, v in out["synthetic"].items() if k != "root"}
    return out


def pretrain_key(cfg: DictConfig) -> str:
    """Hash of everything that affects the pre-training result."""
    trainer = {k: v for k, v in plain(cfg.trainer).items() if k not in NON_RESULT_TRAINER_KEYS}
    time_mask, pivots = stage_augment(cfg, "pretrain")
    callbacks = {k: v for k, v in plain(cfg.callbacks).items() if "ProgressBar" not in str(v.get("_target_"))}
    ident = {
        "data": _data_identity(plain(cfg.pretrain.data)),
        # the eval batch counts too: with the official T2V mask, outputs depend on the batch
        "stage": {
            "epochs": cfg.pretrain.max_epochs,
            "batch_size": cfg.pretrain.batch_size,
            "eval_batch_size": cfg.pretrain.eval_batch_size,
        },
        # the network by name, except QD-DETR's: its keys stay as they were before others existed
        "model": {k: v for k, v in plain(cfg.model).items() if k != "name" or v != DEFAULT_MODEL},
        # the solver only when not the default, so that existing keys stay as they were
        "loss": {k: v for k, v in plain(cfg.loss).items() if k != "matcher" or v != "scipy"},
        "optim": OmegaConf.to_container(cfg.optim, resolve=True),
        "augment": {"time_mask": None if time_mask is None else [time_mask.p, time_mask.max_ratio], "pivots": pivots},
        "seed": cfg.seed,
        "trainer": trainer,
    }
    if cfg.get("fixed_shapes"):  # dropout draws over the padded shape; only when set, as above
        ident["fixed_shapes"] = True
    if cfg.get("compile"):  # other kernels (and on the CPU another dropout draw)
        ident["compile"] = cfg.compile
    if Encoder.of(cfg.features) != Encoder():  # other features; MS-CLAP 2023 keeps the keys as they were
        ident["features"] = Encoder.of(cfg.features).record()
    if callbacks:  # only when present, so that the keys of runs without callbacks stay as they were
        ident["callbacks"] = callbacks
    if cfg.get("decode") is not None and cfg.decode.name != "detr":  # it picks the best epoch; detr keeps old keys
        ident["decode"] = plain(cfg.decode)
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _acquire(lock: FileLock, key: str) -> None:
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("[pretrain] another job is training stage %s: waiting for it", key)
        lock.acquire()


def fetch_or_train(
    cfg: DictConfig, train_stage: Callable[[Path, Path | None], tuple[Path, dict[str, Any], str | None]]
) -> CachedStage:
    """The cached pre-training stage of ``cfg``, trained now if no job has trained it yet.

    ``train_stage(work_dir, resume)`` trains the stage in ``work_dir`` and returns its best
    checkpoint, its validation results and the W&B run id (or None).
    """
    key = pretrain_key(cfg)
    cache = Path(cfg.paths.pretrain_cache)
    final = cache / key
    lock = None
    if is_rank_zero():  # the other DDP ranks join rank 0's training, inside its lock
        cache.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(cache / f"{key}.lock"))
        _acquire(lock, key)
    try:
        if RunFolder(final).stored_best.is_file():
            return _cached(final, key)
        work = cache / f"{key}.partial"
        resume = RunFolder(work).last_ckpt
        if resume.is_file():
            read(resume)  # a file that is not plain weights (or would run code) is one line, not resumed
        best, val, run_id = train_stage(work, resume if resume.is_file() else None)
        if not is_rank_zero():
            return CachedStage(best, key, run_id)
        return _store(cfg, key, work, best, val, run_id)
    finally:
        if lock is not None:
            lock.release()


def _store(cfg: DictConfig, key: str, work: Path, best: Path, val: dict[str, Any], run_id: str | None) -> CachedStage:
    """Turn a trained work folder into the cache entry (under the key's lock)."""
    final = Path(cfg.paths.pretrain_cache) / key
    # the entry keeps the best weights only: last.ckpt (optimiser state for resuming) is spent
    os.replace(best, RunFolder(work).stored_best)
    shutil.rmtree(RunFolder(work).checkpoints, ignore_errors=True)
    config = OmegaConf.to_container(cfg, resolve=True)
    write_json(work / "stage.json", {"key": key, "val": val, "wandb_run": run_id, "config": config})
    os.rename(work, final)  # under the lock: nobody else finished it meanwhile
    return CachedStage(RunFolder(final).stored_best, key, run_id)


def _cached(final: Path, key: str) -> CachedStage:
    log.info("[pretrain] reusing cached stage %s", final)
    info = json.loads((final / "stage.json").read_text()) if (final / "stage.json").is_file() else {}
    return CachedStage(RunFolder(final).stored_best, key, info.get("wandb_run"))


TrainMany = Callable[[list[DictConfig], list[Path], Path, Path | None], list[tuple[Path, dict[str, Any], str | None]]]


def fetch_or_train_many(cfgs: list[DictConfig], train_stages: TrainMany) -> list[CachedStage]:
    """:func:`fetch_or_train` for several configs (stacked runs: one per seed) at once: the stages
    not cached yet are trained together by ``train_stages(cfgs, work_dirs, stacked_dir, resume)``
    (one work folder each, and ``stacked_dir`` for their shared state), holding every key's lock
    (taken in key order, so two such jobs cannot wait on each other). A resumed job resumes the
    shared state only when the same stages are missing as when it stopped."""
    keys = [pretrain_key(c) for c in cfgs]
    cache = Path(cfgs[0].paths.pretrain_cache)
    cache.mkdir(parents=True, exist_ok=True)
    locks = {k: FileLock(str(cache / f"{k}.lock")) for k in sorted(set(keys))}
    try:
        for k, lock in locks.items():
            _acquire(lock, k)
        missing = [i for i, k in enumerate(keys) if not RunFolder(cache / k).stored_best.is_file()]
        trained: dict[int, CachedStage] = {}
        if missing:
            works = [cache / f"{keys[i]}.partial" for i in missing]
            shared = works[0] / "stacked"
            members = {"keys": [keys[i] for i in missing]}
            last = RunFolder(shared).last_ckpt
            same = (shared / "members.json").is_file() and json.loads((shared / "members.json").read_text()) == members
            write_json(shared / "members.json", members)
            done = train_stages([cfgs[i] for i in missing], works, shared, last if same and last.is_file() else None)
            shutil.rmtree(shared, ignore_errors=True)  # the shared state is spent once every entry is stored
            for i, work, (best, val, run_id) in zip(missing, works, done, strict=True):
                trained[i] = _store(cfgs[i], keys[i], work, best, val, run_id)
        return [trained[i] if i in trained else _cached(cache / k, k) for i, k in enumerate(keys)]
    finally:
        for lock in locks.values():
            if lock.is_locked:
                lock.release()
