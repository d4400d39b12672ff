"""Shared helpers of the tests: subprocess runners with the offline tiny MS-CLAP, test audio, and a
random-weight amr checkpoint."""

from __future__ import annotations

import importlib.util
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

from amr.testing.tiny_clap import offline_env

needs_msclap = pytest.mark.skipif(
    importlib.util.find_spec("msclap") is None, reason="msclap is not installed (pip install -e '.[clap]')"
)

# name -> (seconds, sample rate, channels); frames = floor(seconds), +1 centered
GOOD = {"a": (3.4, 32_000, 1), "b": (2.0, 48_000, 2), "c": (1.5, 44_100, 1), "long": (7.5, 22_050, 1)}
CAPTIONS = {"q1": "A dog barks loudly", "q2": "rain falls softly outside", "q3": "A dog barks loudly"}


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
    from amr.config import LossCfg, ModelCfg, OptimCfg
    from amr.lit_module import MomentRetrievalModule

    torch.manual_seed(0)
    m = MomentRetrievalModule(model=asdict(ModelCfg(**model)), loss=asdict(LossCfg()), optim=asdict(OptimCfg()))
    torch.save({"state_dict": m.state_dict(), "hyper_parameters": dict(m.hparams)}, path)
    return path


class EpochRecorder(Callback):
    """A Lightning callback for tests: appends ``<stage dir>:<epoch>`` to ``path`` after each epoch."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_epoch_end(self, trainer, module) -> None:
        with self.path.open("a") as f:
            f.write(f"{trainer.default_root_dir}:{trainer.current_epoch}\n")


def fake_sweep(root: Path, gt_path: Path, systems: dict[str, dict], seeds: tuple[int, ...] = (1, 2)) -> Path:
    """Run folders as ``amr-train`` writes them (run.json, test_metrics.json, the test predictions and
    .hydra/config.yaml), without training: each system's top window is its query's first GT window
    moved by ``noise`` x its length (0 is perfect), followed by 4 random windows.

    ``systems``: name -> {"overrides": [...], "pivots": [...], "stages": [...], "noise": float}.
    """
    import json

    from amr.data.annotations import load_annotations
    from amr.metrics.predictions import write_metrics, write_predictions
    from amr.metrics.retrieval import evaluate

    queries = load_annotations(gt_path)
    for k, (name, spec) in enumerate(systems.items()):
        for seed in seeds:
            rng = np.random.default_rng(1000 * k + seed)
            lines = []
            for q in queries:
                st, ed = q.windows[0]
                shift = spec["noise"] * (ed - st) * rng.normal(size=2)
                start = max(0.0, st + shift[0])
                top = [start, max(start + 0.5, ed + shift[1]), 0.9]
                rest = sorted(rng.uniform(0, q.duration, size=(4, 2)).tolist())
                rows = [top] + [[min(a, b), max(a, b), 0.5 - 0.1 * i] for i, (a, b) in enumerate(rest)]
                lines.append({"qid": q.qid, "query": q.query, "vid": q.vid, "pred_relevant_windows": rows})
            run = root / f"{k}_{name},seed={seed}"
            write_predictions(run / "predictions" / "test_preds.jsonl", lines)
            gt = {q.qid: np.asarray(q.windows) for q in queries}
            write_metrics(
                run / "test_metrics.json",
                evaluate({ln["qid"]: np.asarray(ln["pred_relevant_windows"]) for ln in lines}, gt),
            )
            overrides = [f"experiment={spec.get('experiment', name)}", *spec.get("overrides", []), f"seed={seed}"]
            info = {
                "experiment": spec.get("experiment", name),
                "overrides": overrides,
                "seed": seed,
                "annotations": {"test": str(gt_path)},
            }
            (run / "run.json").write_text(json.dumps(info))
            bt = {"pivots": spec.get("pivots", ["de"]), "stages": spec.get("stages", [])}
            (run / ".hydra").mkdir()
            (run / ".hydra" / "config.yaml").write_text(json.dumps({"augment": {"backtranslation": bt}}))
    return root


def fake_annotations(path: Path, n: int = 300, seed: int = 0) -> Path:
    """A test split shaped like CASTELLA's: 1-5 min recordings, 1-3 windows a query, lengths
    log-normal around 4 s."""
    import json

    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n):
        duration = float(rng.integers(60, 300))
        windows = []
        for _ in range(int(rng.integers(1, 4))):
            length = float(np.clip(np.round(rng.lognormal(np.log(4.0), 1.0)), 1, 60))
            st = float(rng.integers(0, int(duration - length)))
            windows.append([st, st + length])
        lines.append(
            {
                "qid": f"q{i:04d}",
                "query": f"sound {i}",
                "vid": f"v{i}",
                "duration": duration,
                "relevant_windows": windows,
            }
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path
