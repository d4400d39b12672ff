"""Shared helpers of the tests: subprocess runners with the offline tiny MS-CLAP, test audio, and a
random-weight amr checkpoint."""

from __future__ import annotations

import importlib.util
import json
import os
import struct
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from pytorch_lightning import Callback
from pytorch_lightning.loggers import Logger

from amr.testing.tiny_clap import offline_env

needs_msclap = pytest.mark.skipif(
    importlib.util.find_spec("msclap") is None, reason="msclap is not installed (pip install -e '.[clap]')"
)

# name -> (seconds, sample rate, channels); frames = floor(seconds), +1 centered
GOOD = {"a": (3.4, 32_000, 1), "b": (2.0, 48_000, 2), "c": (1.5, 44_100, 1), "long": (7.5, 22_050, 1)}
CAPTIONS = {"q1": "A dog barks loudly", "q2": "rain falls softly outside", "q3": "A dog barks loudly"}


def debug_config(root: Path, run: str, *overrides: str, logger: str = "csv"):
    """The composed training config of a ``debug=fast`` run written to ``root/run`` (data and caches
    under ``root``)."""
    from hydra import compose, initialize_config_dir

    from amr.training.run import CONF_DIR

    base = ["debug=fast", f"logger={logger}", f"paths.root={root}", f"paths.output_dir={root / run}"]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("train", overrides=[*base, *overrides])


def run_python(args: list[str], root: Path, check: bool = True) -> subprocess.CompletedProcess:
    """``python ARGS`` in the offline environment of the tiny MS-CLAP under ``root``."""
    env = {**os.environ, **offline_env(root), "WANDB_MODE": "disabled"}
    proc = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"rc {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def run_amr(args: list[str], root: Path, check: bool = True) -> subprocess.CompletedProcess:
    return run_python(["-m", "amr.cli", *args], root, check)


def wav_sample_rate_zero(path: Path) -> None:
    data = np.zeros(400, dtype="<i2").tobytes()
    fmt = struct.pack("<HHIIHH", 1, 1, 0, 0, 2, 16)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)


def random_checkpoint(path: Path, **model) -> Path:
    """A weights-only amr checkpoint of a randomly initialised network (Lightning's layout)."""
    from amr.model import QDDETRConfig
    from amr.training.config import LossCfg, OptimCfg
    from amr.training.module import MomentRetrievalModule

    torch.manual_seed(0)
    m = MomentRetrievalModule(model=asdict(QDDETRConfig(**model)), loss=asdict(LossCfg()), optim=asdict(OptimCfg()))
    torch.save({"state_dict": m.state_dict(), "hyper_parameters": dict(m.hparams)}, path)
    return path


class EpochRecorder(Callback):
    """A Lightning callback for tests: appends ``<stage dir>:<epoch>`` to ``path`` after each epoch."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_epoch_end(self, trainer, module) -> None:
        with self.path.open("a") as f:
            f.write(f"{trainer.default_root_dir}:{trainer.current_epoch}\n")


class RecordingLogger(Logger):
    """A Lightning logger for tests: appends every ``log_metrics`` call to ``path`` as a JSON line."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = Path(path)

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> str:
        return "0"

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({k: float(v) for k, v in metrics.items()}) + "\n")
