"""What happens around Hydra's jobs of ``amr-train``. Before: one-line composition errors, refusing
a run folder that holds a run (resolved as Hydra resolves it), the keys a sweep varies, and the
resolvers that name run folders (never shared) and a sweep's job folders (system and seed). During
and after a sweep: a job that fails, fails alone (:func:`job_failed`), and the sweep's end names
every failed job (:class:`SweepSummary`)."""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError

from amr.errors import InputError
from amr.results.run_folder import RunFolder, failed_jobs
from amr.training.naming import SWEEP_KEYS_ENV, short_value, sweep_keys, system_name

CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")

TAKEN = "run folder already holds a run; pick another hydra.run.dir, or resume it with ckpt_path=last"
LAUNCH_ENV = "AMR_LAUNCH"  # set by amr-train -m: this launch's id, which its failed jobs record
FAILED: list[dict[str, Any]] = []  # the failed jobs of the sweep that ended in this process
SEARCHPATH = "hydra.searchpath="
ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


def _job_name(experiment: str, seed: int) -> str:
    """``hydra.sweep.subdir``: the job's system and seed, short and filesystem-safe."""
    return (
        f"{system_name(experiment, list(HydraConfig.get().overrides.task), sweep_keys())},seed={short_value(str(seed))}"
    )


OmegaConf.register_new_resolver("amr_job", _job_name, replace=True)
# the default run folder's last component: two runs started in the same second never share a folder
OmegaConf.register_new_resolver("amr_pid", os.getpid, use_cache=True, replace=True)


def _one_line(err: Exception) -> str:
    """A composition error as one line: the key and what is known there, or the group and its options."""
    cause = err.__cause__
    full_key = getattr(cause, "full_key", None)
    text = str(err)
    if "Available options" in text:  # an unknown option of a config group
        head, _, rest = text.partition("Available options")
        options = []
        for line in rest.splitlines()[1:]:
            if not line.startswith("\t"):
                break
            options.append(line.strip())
        return f"{head.strip().splitlines()[0]} (available: {', '.join(options)})"
    if full_key and cause is not None:
        first = str(cause).strip().splitlines()[0]
        if not isinstance(cause, (ConfigKeyError, ConfigAttributeError)):  # a value of the wrong type
            return f"{full_key}: {first}"
        parent = full_key.rsplit(".", 1)[0] if "." in full_key else ""
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            base = compose("train")
        node = OmegaConf.select(base, parent) if parent else base
        known = f" (known keys: {', '.join(map(str, node.keys()))})" if OmegaConf.is_dict(node) else ""
        return f"{full_key}: {first}{known}"
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def resume_checkpoint(cfg: DictConfig, out: Path) -> Path | None:
    """The checkpoint a run in ``out`` resumes from (``ckpt_path`` with ``fit=true``; ``last``: the
    folder's own), or None."""
    if not (cfg.fit and cfg.ckpt_path):
        return None
    return RunFolder(out).last_ckpt if cfg.ckpt_path == "last" else Path(cfg.ckpt_path)


def refuse_taken(out: Path, resume: Path | None) -> None:
    """A run writes only into a folder that holds no run, or (resuming) into the unfinished run whose
    last checkpoint it resumes from. Raises InputError naming the folder otherwise."""
    folder = RunFolder(out)
    if out.exists() and not out.is_dir():
        raise InputError("the run folder is a file; pick another hydra.run.dir", out)
    there = next(p for p in (out, *out.parents) if p.exists())
    if not os.access(there, os.W_OK):
        raise InputError(f"cannot write the run folder: {there} is read-only; pick another hydra.run.dir", out)
    if not folder.holds_run():
        return
    if resume is None:
        raise InputError(TAKEN, out)
    if resume.resolve() != folder.last_ckpt.resolve():
        raise InputError(
            f"run folder already holds another run; ckpt_path={resume} is not its last checkpoint: "
            "resume into a new folder (leave hydra.run.dir out)",
            out,
        )
    if folder.finished():
        raise InputError("this run has finished: nothing to resume (its results are in this folder)", out)


def _refuse_taken_run_dir(cfg: DictConfig) -> None:
    """Hydra writes ``.hydra/`` into the run folder before any code of ours runs: refuse a run folder
    that holds a run (unless resuming that run), resolved as Hydra will resolve it."""
    HydraConfig.instance().set_config(cfg)
    out = Path(str(OmegaConf.select(cfg, "hydra.run.dir")))
    try:
        refuse_taken(out, resume_checkpoint(cfg, out))
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def config_source(argv: list[str], overrides: list[str]) -> tuple[str, str, list[str]]:
    """The primary config folder and name, and the overrides, as Hydra reads them with
    ``-cp/--config-path`` (absolute, or relative to ``amr/training/``, where ``@hydra.main`` is),
    ``-cn/--config-name`` and ``-cd/--config-dir`` (a folder added to ``hydra.searchpath``)."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--config-path", "-cp")
    parser.add_argument("--config-name", "-cn")
    parser.add_argument("--config-dir", "-cd")
    known, _ = parser.parse_known_args(argv)
    config_dir = CONF_DIR
    if known.config_path:
        config_dir = str((Path(__file__).resolve().parent / known.config_path).resolve())
    if known.config_dir:
        extra = f"file://{Path(known.config_dir).resolve()}"
        given = [o for o in overrides if o.startswith(SEARCHPATH)]
        overrides = [o for o in overrides if not o.startswith(SEARCHPATH)]
        listed = given[-1][len(SEARCHPATH) :].strip().removeprefix("[").removesuffix("]") if given else ""
        overrides.append(f"{SEARCHPATH}[{','.join(x for x in (extra, listed) if x)}]")
    return config_dir, known.config_name or "train", overrides


def preflight(argv: list[str]) -> None:
    """Compose the config once before Hydra does, so that a misspelt key, a value of the wrong type
    or an unknown group option is one line naming it (sweep values are checked by each job), and
    so that a single run never starts in a folder that holds a run. A sweep's jobs (in this
    process or a launcher's workers) learn from ``AMR_SWEEP_KEYS`` which keys it varies, so that
    job folders, W&B groups and run names name the system by them."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import ConfigCompositionException

    os.environ[LAUNCH_ENV] = uuid.uuid4().hex
    try:
        parsed = OverridesParser.create().parse_overrides([a for a in argv if "=" in a and not a.startswith("-")])
    except Exception:  # a malformed override: Hydra's own message says where
        return
    sweep = "-m" in argv or "--multirun" in argv
    plain = [str(o.input_line) for o in parsed if not o.is_sweep_override()]
    if sweep:
        swept = sorted(o.get_key_element().lstrip("+~") for o in parsed if o.is_sweep_override())
        os.environ[SWEEP_KEYS_ENV] = ",".join(swept)
        # keys below a swept group (logger.wandb.mode with logger=csv,[csv,wandb]) are each job's to check
        roots = {"hydra", *(re.split(r"[./@]", k)[0] for k in swept)}
        plain = [o for o in plain if o.startswith(SEARCHPATH) or re.split(r"[./@=]", o.lstrip("+~"))[0] not in roots]
    config_dir, config_name, plain = config_source(argv, plain)
    try:
        with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
            cfg = compose(config_name, overrides=plain, return_hydra_config=not sweep)
    except ConfigCompositionException as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {_one_line(e)}", file=sys.stderr)
        raise SystemExit(2) from None
    if not sweep:
        _refuse_taken_run_dir(cfg)


def in_sweep() -> bool:
    """True inside a job of ``amr-train -m``."""
    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:  # no Hydra job (tests, notebooks)
        return False


def job_failed(error: str, exc_info: ExcInfo) -> None:
    """A sweep job's failure: its traceback into the job's own log (``train.log``) alone, one line
    on stderr naming the job, and a record in its folder that the sweep's end summarises. The
    other jobs go on."""
    out = Path(HydraConfig.get().runtime.output_dir)
    record = logging.LogRecord("amr.train", logging.ERROR, __file__, 0, "job failed: %s", (error,), exc_info)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
    print(f"error: job {out.name}: {error}", file=sys.stderr)
    RunFolder(out).write_failure({"launch": os.environ.get(LAUNCH_ENV, ""), "job": out.name, "error": error})


class SweepSummary(Callback):
    """Hydra callback (``conf/hydra/default.yaml``): at a sweep's end, one line per failed job on
    stderr; ``amr-train`` then exits non-zero."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        FAILED[:] = failed_jobs(Path(str(config.hydra.sweep.dir)), os.environ.get(LAUNCH_ENV, ""))
        if FAILED:
            print(f"error: {len(FAILED)} job(s) of the sweep failed (tracebacks in their train.log):", file=sys.stderr)
            for r in FAILED:
                print(f"  {r['job']}: {r['error']}", file=sys.stderr)
