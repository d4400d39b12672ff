"""The researcher's loop end to end: a parallel sweep with W&B and CSV, per-system names, one
pre-training per key, settings that would be ignored refused up front, evaluating a checkpoint."""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from amr.data.dataset import MomentDataset
from amr.results.report import report
from amr.training.naming import MAX_TAG, system_name, tags
from amr.training.run import CONF_DIR, train


def _cfg(root: Path, run: str, *overrides: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(
            "train",
            overrides=["debug=fast", "logger=none", f"paths.root={root}", f"paths.output_dir={root / run}", *overrides],
        )


def _amr_train(*args: str, env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "amr.training.run", *args],
        capture_output=True,
        text=True,
        env=env or dict(os.environ, WANDB_MODE="disabled"),
        timeout=timeout,
    )


def _wandb_records(folder: Path):
    """Every record of every offline W&B run below ``folder``, read from its ``.wandb`` file (a
    LevelDB-style log of protobuf records)."""
    from wandb.proto import wandb_internal_pb2

    for path in sorted(p for p in folder.rglob("offline-run-*/*.wandb") if "latest-run" not in p.parts):
        data, pos, buf = path.read_bytes(), 7, b""
        while pos + 7 <= len(data):
            left = 32768 - pos % 32768
            _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
            if left < 7 or (length == 0 and kind == 0):
                pos += left
                continue
            buf += data[pos + 7 : pos + 7 + length]
            pos += 7 + length
            if kind in (1, 4):  # a whole record, or the last piece of one
                rec = wandb_internal_pb2.Record()
                rec.ParseFromString(buf)
                buf = b""
                yield rec


def _wandb_runs(folder: Path) -> list:
    """The run record (group, job type, name, tags) of every offline W&B run below ``folder``."""
    return [rec.run for rec in _wandb_records(folder) if rec.WhichOneof("record_type") == "run"]


def _wandb_history_keys(folder: Path) -> set[str]:
    """Every metric name logged to the offline W&B runs below ``folder``."""
    keys = set()
    for rec in _wandb_records(folder):
        if rec.WhichOneof("record_type") == "history":
            keys |= {item.key or "/".join(item.nested_key) for item in rec.history.item}
    return keys


def test_parallel_sweep_with_wandb_and_csv(tmp_path) -> None:
    long_root = tmp_path / ("synthetic_data_in_a_folder_whose_path_is_long" * 2) / "x"
    sweep = tmp_path / "D"
    env = {k: v for k, v in os.environ.items() if k != "WANDB_MODE"}
    proc = _amr_train(
        "-m",
        "experiment=system1,system2",
        "augment.backtranslation.pivots=[de],[fr]",
        "seed=1,2",
        "debug=fast",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "logger=[csv,wandb]",
        "logger.wandb.mode=offline",
        f"paths.synthetic_root={long_root}",
        f"paths.root={tmp_path}",
        f"hydra.sweep.dir={sweep}",
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert (sweep / "multirun.yaml").is_file() and len(jobs) == 8
    names = {p.name.split("_", 1)[1] for p in jobs}
    assert "system2,pivots=fr,seed=2" in names and len(names) == 8  # the system and the seed in the name
    assert all(
        (j / "test_metrics.json").is_file() and (j / "logs" / "finetune" / "metrics.csv").is_file() for j in jobs
    )
    # System 1 and 2 share their pre-training: one per (pivot, seed), trained once though jobs ran in parallel
    cache = tmp_path / "outputs" / "pretrain_cache"
    entries = [p for p in cache.iterdir() if p.is_dir()]
    assert len(entries) == 4 and all((e / "best.ckpt").is_file() for e in entries)
    runs = _wandb_runs(sweep)
    assert sum(r.job_type == "pretrain" for r in runs) == 4 and sum(r.job_type == "finetune" for r in runs) == 8
    assert len({r.run_group for r in runs}) == 4  # one group per system, its seeds together
    assert all(len(r.display_name) <= 64 and all(len(t) <= MAX_TAG for t in r.tags) for r in runs)
    assert all(f"sweep={sweep.name}" in r.tags for r in runs)  # two sweeps of one system are told apart
    logged = _wandb_history_keys(sweep)  # per GT-length bucket metrics beside the official ones
    assert {"val/R1@0.7", "val/3-10s/R1@0.7", "best/test/3-10s/mAP"} <= logged
    for j in jobs:  # the fine-tune run says which pre-training it started from
        info = json.loads((j / "run.json").read_text())
        assert info["pretrain_key"] in {e.name for e in entries} and info["pretrain_wandb_run"]
    out = proc.stdout + proc.stderr
    synced = [line.split("wandb sync ", 1)[1].strip() for line in out.splitlines() if "wandb sync " in line]
    assert synced and all(Path(p).is_dir() for p in synced)
    table = report([sweep], None)
    rows = [line for line in table.splitlines() if line.startswith("| system")][1:]
    assert len(rows) == 4 and all("| 2 |" in r for r in rows)
    assert "[pretrain] epoch 2/2" in (jobs[0] / "train.log").read_text()  # epoch lines in Hydra's job log


def test_every_override_that_changes_results_names_the_system_alike_everywhere() -> None:
    """A sweep over callbacks gave both jobs one folder name and one W&B group (``default``), while
    the report told them apart; logger and launcher options split no system anywhere."""
    from amr.results.report.runs import Run, group_systems
    from amr.training.loggers import run_tags

    swept = {"callbacks", "seed"}
    names = {system_name("default", [f"callbacks={c}", "seed=1"], swept) for c in ("none", "ema")}
    assert names == {"default,callbacks=none", "default,callbacks=ema"}
    assert system_name("default", ["logger=[csv,wandb]", "hydra/launcher=joblib", "model.dropout=0.2"]) == (
        "default,dropout=0.2"
    )

    def run(*overrides: str) -> Run:
        return Run(Path("r"), "default", ["experiment=default", *overrides, "seed=1"], 1, {}, Path("gt"))

    runs = [
        run("callbacks=none", "logger=csv"),
        run("callbacks=ema", "logger=csv"),
        run("callbacks=ema", "logger=wandb"),
    ]
    assert list(group_systems(runs)) == ["default [callbacks=none]", "default [callbacks=ema]"]
    assert run_tags(["baseline-v2", "x" * 80], ["seed=1"]) == ["baseline-v2", "x" * MAX_TAG, "seed=1"]  # kept as given


def test_names_and_tags_stay_short_and_safe() -> None:
    long = "data.root=/home/someone/datasets/official/castella_and_clotho_moment_features_v2"
    assert len(long) > 64
    tagged = tags(["experiment=system1", long, "hydra.launcher.n_jobs=2"])
    assert all(len(t) <= MAX_TAG for t in tagged) and len(tagged) == 2
    assert re.fullmatch(r"data\.root=castella_and_\w*-[0-9a-f]{6}", tagged[1])  # basename + a short hash
    name = system_name("system1", [long, "seed=3", "augment.backtranslation.pivots=[de,fr]", "paths.root=/x"])
    assert re.fullmatch(r"system1,root=castella_and_\w*-[0-9a-f]{6},pivots=de\+fr", name)
    assert "/" not in name and "seed" not in name


def test_single_stage_run_is_augmented_in_its_stage(tmp_path, monkeypatch) -> None:
    """castella_only has one stage, the fine-tune stage: augment=seed_report masks and draws versions."""
    seen: list[tuple] = []
    original = MomentDataset.__getitem__

    def spy(self, index):
        item = original(self, index)
        if self.train:
            seen.append((item["masked"], item["pivot"]))
        return item

    monkeypatch.setattr(MomentDataset, "__getitem__", spy)
    train(_cfg(tmp_path, "one", "experiment=castella_only", "augment=seed_report", "train.max_epochs=3"))
    assert seen and sum(m is not None for m, _ in seen) > 0
    assert sum(p == "de" for _, p in seen) > 0 and sum(p is None for _, p in seen) > 0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["pretrain=none", "augment.time_mask.stages=[pretrain]"], r"augment\.time_mask\.stages=\['pretrain'\] but"),
        (["augment.backtranslation.pivots=[]", "augment.backtranslation.stages=[finetune]"], "pivots=\\[\\]: nothing"),
        (["augment.backtranslation.pivots=[de]", "augment.backtranslation.stages=[]"], "stages=\\[\\]: never used"),
        (["trainer.precision=bf17"], r"trainer\.precision must be one of \[.*'bf16-mixed'"),
        (["trainer.accelerator=gpux"], r"trainer\.accelerator must be one of"),
        (["optim.lr=-1"], r"optim\.lr must be > 0"),
        (["model.dropout=1.5"], r"model\.dropout must be in \[0, 1\)"),
        (["logger=wandb", "logger.wandb.mode=ofline"], r"logger\.wandb\.mode must be one of \['online', 'offline'"),
        (["train.batch_size=0"], r"train\.batch_size must be >= 1"),
        (["+callbacks.es.patience=3"], r"callbacks\.es needs a _target_"),
        (["+logger.mlflow.experiment_name=x"], r"logger\.mlflow needs a _target_ \(a Lightning logger class\)"),
        (["+logger.ml._target_=pytorch_lightning.loggers.MLFlowLoger"], r"logger\.ml\._target_: cannot import"),
        (["+logger.x._target_=pytorch_lightning.callbacks.EarlyStopping"], r"logger\.x\._target_: .* is not a Lig"),
        (["logger=csv", "+logger.csv.flush_every=5"], r"logger\.csv: CSVLogger takes no argument flush_every"),
        (["+logger.x._target_=tests.uninstalled_logger.UninstalledLogger"], r"logger\.x: Requirement 'nothing-of-that"),
        (["fit=false"], "fit=false evaluates a checkpoint: give ckpt_path"),
        (["data.synthetic.preset=clotho_moment"], r"data\.synthetic\.preset=clotho_moment but data\.name=castella"),
        (["data.length_buckets=[3,1]"], r"data\.length_buckets: length bucket edges must be >= 0 and strictly"),
        (["decode=detr", "decode.penalty=-2"], r"decode\.penalty is not read by decode=detr"),
        (["decode=saliency", "decode.detr_weight=0.3"], r"decode\.detr_weight is not read by decode=saliency"),
        (["decode=hybrid", "decode.detr_weight=1.5"], r"decode\.detr_weight must be in \[0, 1\]"),
        (["loss.cls_gamma=1.0"], r"loss\.cls_alpha and loss\.cls_gamma are read only by loss\.cls=focal"),
        (["loss.cls=dice"], r"loss\.cls must be one of \['ce', 'focal', 'varifocal'\]"),
        (["+optim.lrr=0.1", "+train.max_epoch=50"], r"train\.max_epoch, optim\.lrr: not a setting of the training"),
        (["+foo=1"], r"^foo: not a setting of the training config"),
        (["model.aud_dim=512"], r"model\.aud_dim must be 768, the features\.audio_dim of msclap2023 features, got 512"),
        (["decode=segmental", "decode.threshold_k=nan"], r"decode\.threshold_k must be a finite number, got nan"),
        (["decode=segmental", "decode.min_len=9", "decode.max_len=3"], r"decode\.min_len 9 exceeds decode\.max_len 3"),
        (["+callbacks.x._target_=os.system"], r"callbacks\.x\._target_: os\.system is not an importable Lightning"),
    ],
)
def test_settings_that_would_be_ignored_or_fail_late_are_refused_up_front(tmp_path, overrides, message) -> None:
    with pytest.raises(ValueError, match=message):
        train(_cfg(tmp_path, "bad", "experiment=castella_only", *overrides))
    assert not (tmp_path / "outputs").exists()  # before any data is read or generated


@pytest.mark.parametrize(
    ("override", "line"),
    [
        ("augment.time_mask.pp=0.1", "error: augment.time_mask.pp: Key 'pp' not in 'TimeMaskConfig' (known keys: p,"),
        ("experiment=systme1", "error: In 'train': Could not find 'experiment/systme1' (available: baseline,"),
        ("train.batch_size=big", "error: train.batch_size: Value 'big' of type 'str' could not be converted"),
    ],
)
def test_composition_errors_are_one_line(tmp_path, override, line) -> None:
    proc = _amr_train("debug=fast", override, f"paths.root={tmp_path}", timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and proc.stderr.startswith(line)


def test_cli_errors_are_one_line_and_a_search_over_an_inactive_setting_is_refused(tmp_path) -> None:
    proc = _amr_train("experiment=castella_only", "trainer.precision=bf17", f"paths.root={tmp_path}")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: trainer.precision must be one of [")
    assert "Traceback" not in proc.stderr
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    proc = _amr_train(
        "-m", "hparams_search=optuna", "experiment=baseline", "hydra.sweeper.n_trials=1", f"paths.root={tmp_path}"
    )
    assert "the search space covers augment.time_mask.max_ratio, augment.time_mask.p" in proc.stderr
    assert not (tmp_path / "outputs" / "pretrain_cache").exists()


def test_callbacks_group_is_instantiated(tmp_path) -> None:
    log = tmp_path / "epochs.txt"
    train(
        _cfg(
            tmp_path,
            "cb",
            "experiment=castella_only",
            "+callbacks.rec._target_=tests.helpers.EpochRecorder",
            f"+callbacks.rec.path={log}",
        )
    )
    assert log.read_text().splitlines() == [f"{tmp_path / 'cb'}:0", f"{tmp_path / 'cb'}:1"]
    # the group's own entries: early stopping (no epoch counts as an improvement here) and EMA
    stop = ["callbacks.early_stopping.patience=0", "callbacks.early_stopping.min_delta=1000"]
    train(
        _cfg(tmp_path, "es", "experiment=castella_only", "callbacks=[early_stopping,ema]", *stop, "train.max_epochs=9")
    )
    last = torch.load(tmp_path / "es" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 1  # stopped at the first epoch without improvement, not at 9
    assert any("EMAWeightAveraging" in k for k in last["callbacks"])


def test_loggers_are_built_from_their_target(tmp_path) -> None:
    """The logger group is built like the callbacks group: each entry's ``_target_`` with its
    arguments, so any Lightning logger works beside the built-in ones and their file layout."""
    rec = tmp_path / "logged.jsonl"
    extra = ["+logger.rec._target_=tests.helpers.RecordingLogger", f"+logger.rec.path={rec}"]
    args = ["experiment=castella_only", "logger=[csv,tensorboard]", "+logger.csv.flush_logs_every_n_steps=1"]
    train(_cfg(tmp_path, "lg", *args, *extra))
    logged = [json.loads(line) for line in rec.read_text().splitlines()]
    assert any("val/R1@0.7" in row for row in logged) and any("test/R1@0.7" in row for row in logged)
    stage_logs = tmp_path / "lg" / "logs" / "finetune"
    assert (stage_logs / "metrics.csv").is_file() and list(stage_logs.glob("events.out.tfevents.*"))


@pytest.mark.parametrize("trained_with", [[], ["decode=segmental", "model.hidden_dim=64"]], ids=["default", "own"])
def test_evaluating_a_checkpoint_reproduces_the_run(tmp_path, trained_with) -> None:
    """``fit=false`` evaluates a checkpoint with the decoder and network it was trained with, not
    the composed defaults (a segmental run evaluated with detr scored another result)."""
    train(_cfg(tmp_path, "run", "experiment=castella_only", *trained_with))
    best = tmp_path / "run" / "checkpoints" / "best.ckpt"
    train(_cfg(tmp_path, "eval", "experiment=castella_only", "fit=false", f"ckpt_path={best}"))
    for name in ("test_metrics.json", "predictions/test_preds.jsonl", "predictions/val_metrics.json"):
        assert (tmp_path / "eval" / name).read_text() == (tmp_path / "run" / name).read_text(), name
    assert json.loads((tmp_path / "eval" / "run.json").read_text())["evaluated"] == str(best)
    assert not (tmp_path / "eval" / "checkpoints").exists()  # nothing trained
    if not trained_with:
        return
    # a decoder on the command line wins over the checkpoint's, and says so
    proc = _amr_train(
        "experiment=castella_only", "debug=fast", "logger=none", "fit=false", f"ckpt_path={best}", "decode=detr",
        f"paths.root={tmp_path}", f"hydra.run.dir={tmp_path / 'detr'}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    log = (tmp_path / "detr" / "train.log").read_text()
    assert "fit=false: decode as the command line sets it: {'name': 'detr'" in log
    assert "fit=false: model as the checkpoint says: {'name': 'qd_detr', 'hidden_dim': 64" in log
    preds = "predictions/test_preds.jsonl"
    assert (tmp_path / "detr" / preds).read_text() != (tmp_path / "run" / preds).read_text()


def test_evaluating_a_checkpoint_uses_its_calibrator_and_names_its_features(tmp_path, caplog) -> None:
    """``fit=false``: a calibrator beside the checkpoint re-scores the moments (said in the log),
    ``calibrator=PATH`` another one, ``calibrator=none`` none; the checkpoint names the feature set
    it was trained on, and evaluating it on another is said."""
    import logging

    import numpy as np

    from amr.checkpoints import Checkpoint
    from amr.inference.calibration import FEATURES, beside, fit
    from amr.inference.decoders import DecodeConfig

    caplog.set_level(logging.INFO, logger="amr.train")
    train(_cfg(tmp_path, "run", "experiment=castella_only"))
    best = tmp_path / "run" / "checkpoints" / "best.ckpt"
    assert Checkpoint.read(best).features == {
        "name": "castella",
        "feat_dir": "castella",
        "encoder": {"name": "msclap2023", "audio": "clap", "text": "clap_text", "audio_dim": 768, "text_dim": 768},
    }
    x = np.random.default_rng(0).normal(size=(400, len(FEATURES)))
    fit(x, x[:, 3] - x[:, 0] > 0.5, "logistic", DecodeConfig()).save(beside(best))
    fit(x, x[:, 0] > 0.5, "isotonic", DecodeConfig()).save(tmp_path / "other.json")
    preds = "predictions/test_preds.jsonl"
    runs = {}
    for name, extra in (
        ("beside", []),
        ("other", [f"calibrator={tmp_path / 'other.json'}"]),
        ("none", ["calibrator=none"]),
    ):
        caplog.clear()
        train(_cfg(tmp_path, name, "experiment=castella_only", "fit=false", f"ckpt_path={best}", *extra))
        said = [m for m in caplog.messages if m.startswith("fit=false:")]
        runs[name] = ((tmp_path / name / preds).read_text(), "\n".join(said))
    assert f"fit=false: logistic calibrator {beside(best)} (beside the checkpoint)" in runs["beside"][1]
    assert f"fit=false: isotonic calibrator {tmp_path / 'other.json'} (given)" in runs["other"][1]
    assert "calibrator" not in runs["none"][1] and runs["none"][0] == (tmp_path / "run" / preds).read_text()
    assert len({runs[n][0] for n in runs}) == 3  # each calibrator re-scores the moments its own way
    caplog.clear()
    train(
        _cfg(
            tmp_path,
            "clotho",
            "experiment=castella_only",
            "data=synthetic_clotho_moment",
            "fit=false",
            f"ckpt_path={best}",
            "calibrator=none",
        )
    )
    assert "fit=false: clotho-moment features (the checkpoint was trained on castella)" in caplog.text
    with pytest.raises(ValueError, match="calibrator is read only by fit=false"):
        train(_cfg(tmp_path, "bad", "experiment=castella_only", "calibrator=none"))


def test_local_config_group_holds_per_machine_settings(tmp_path) -> None:
    """An optional, git-ignored ``conf/local/default.yaml`` sets this machine's paths (below the
    command line), and a conf/ without one composes as before."""
    import shutil

    conf = tmp_path / "conf"
    shutil.copytree(CONF_DIR, conf)
    for extra in (conf / "local").glob("*.yaml"):
        extra.unlink()
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        assert compose("train", overrides=["paths.root=/r"]).paths.data_root == "/r/data/official"
    (conf / "local" / "default.yaml").write_text("# @package _global_\npaths:\n  data_root: /mnt/features\n")
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        assert compose("train").paths.data_root == "/mnt/features"
        assert compose("train", overrides=["paths.data_root=/x"]).paths.data_root == "/x"
    ignored = subprocess.run(["git", "check-ignore", "-q", "conf/local/default.yaml"], cwd=Path(CONF_DIR).parent)
    assert ignored.returncode == 0
