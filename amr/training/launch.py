"""What happens before Hydra starts a job of ``amr-train``: one-line composition errors, refusing a
run folder that holds a run (resolved as Hydra resolves it), the keys a sweep varies, and the
resolvers that name run folders (never shared) and a sweep's job folders (system and seed)."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError

from amr.errors import InputError
from amr.results.run_folder import RunFolder
from amr.training.naming import SWEEP_KEYS_ENV, short_value, sweep_keys, system_name

CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")

TAKEN = "run folder already holds a run; pick another hydra.run.dir, or resume it with ckpt_path=last"


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


def _refuse_taken_run_dir(cfg: DictConfig) -> None:
    """Hydra writes ``.hydra/`` into the run folder before any code of ours runs: refuse a run folder
    that already holds a run (unless resuming), resolved as Hydra will resolve it."""
    if cfg.ckpt_path and cfg.fit:
        return
    HydraConfig.instance().set_config(cfg)
    out = Path(str(OmegaConf.select(cfg, "hydra.run.dir")))
    if RunFolder(out).holds_run():
        print(f"error: {InputError(TAKEN, out)}", file=sys.stderr)
        raise SystemExit(2)


def preflight(argv: list[str]) -> None:
    """Compose the config once before Hydra does, so that a misspelt key, a value of the wrong type
    or an unknown group option is one line naming it (sweep values are checked by each job), and
    so that a single run never starts in a folder that holds a run. A sweep's jobs (in this
    process or a launcher's workers) learn from ``AMR_SWEEP_KEYS`` which keys it varies, so that
    job folders, W&B groups and run names name the system by them."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import ConfigCompositionException

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
        plain = [o for o in plain if re.split(r"[./@=]", o.lstrip("+~"))[0] not in roots]
    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose("train", overrides=plain, return_hydra_config=not sweep)
    except ConfigCompositionException as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {_one_line(e)}", file=sys.stderr)
        raise SystemExit(2) from None
    if not sweep:
        _refuse_taken_run_dir(cfg)
