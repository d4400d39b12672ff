"""Training entry point: config composition, every experiment, resume, pretrain cache, multirun."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig

from amr.errors import InputError
from amr.training.pretrain_cache import pretrain_key
from amr.training.run import CONF_DIR, train

EXPERIMENTS = sorted(p.stem for p in (Path(CONF_DIR) / "experiment").glob("*.yaml"))


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("amr_root")


def _cfg(root: Path, run: str, *overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(
            "train",
            overrides=[
                "debug=fast",
                "logger=none",
                f"paths.root={root}",
                f"paths.output_dir={root / 'runs' / run}",
                *overrides,
            ],
        )


def test_experiment_list_is_complete() -> None:
    assert {"baseline", "system1", "system2", "castella_only", "official_baseline"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_runs_a_few_steps(root, experiment) -> None:
    cfg = _cfg(root, f"fdr_{experiment}", f"experiment={experiment}", "+trainer.fast_dev_run=2")
    results = train(cfg)
    assert set(results) == {"val", "test"}
    assert (root / "runs" / f"fdr_{experiment}" / "test_metrics.json").is_file()


def test_mixed_precision_trains_with_gradient_clipping(root) -> None:
    """bf16-mixed goes through Lightning's AMP plugin, which refuses to clip the gradients of a fused
    optimizer: the module must build a plain AdamW there (the same plugin path as on a GPU)."""
    cfg = _cfg(root, "bf16", "trainer.precision=bf16-mixed", "+trainer.fast_dev_run=2", "pretrain=none")
    results = train(cfg)
    assert cfg.trainer.gradient_clip_val == 0.1
    assert set(results) == {"val", "test"}
    assert all(torch.isfinite(torch.tensor(v)) for v in results["test"]["brief"].values())


def test_seed_systems_differ_only_in_augmentation(root) -> None:
    cfgs = {e: _cfg(root, "same", f"experiment={e}") for e in ("baseline", "system1", "system2")}
    strip = lambda c: {k: v for k, v in c.items() if k not in ("augment", "experiment_name")}  # noqa: E731
    assert strip(cfgs["baseline"]) == strip(cfgs["system1"]) == strip(cfgs["system2"])
    assert list(cfgs["system1"].augment.backtranslation.stages) == ["pretrain", "finetune"]
    assert list(cfgs["system2"].augment.backtranslation.stages) == ["pretrain"]
    assert cfgs["system1"].augment.time_mask.p == 0.15 and cfgs["baseline"].augment.time_mask.stages == []


@pytest.mark.parametrize(
    ("override", "error"),
    [
        ("augment.time_mask.pp=0.1", ConfigCompositionException),
        ("trainer_x=1", ConfigCompositionException),
        ("train.batch_size=big", ConfigCompositionException),
    ],
)
def test_typos_fail_at_composition(root, override, error) -> None:
    with pytest.raises(error):
        _cfg(root, "x", override)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("augment.time_mask.p=1.5", "augment.time_mask.p must be in \\[0, 1\\]"),
        ("augment.backtranslation.pivots=[xx]", "pivots must be one of \\['de', 'fr', 'es'\\]"),
        ("augment.backtranslation.stages=[finetuning]", "stages must be one of"),
        ("model.t2v_mask=sometimes", "model.t2v_mask must be one of"),
        ("+trainer.max_epochs=3", "trainer.max_epochs is not read: set pretrain.max_epochs and train.max_epochs"),
        ("train.max_epochs=-1", "train.max_epochs must be >= 0"),
        ("stacked_runs=0", "stacked_runs must be >= 1"),
        ("stacked_runs=2", "stacked_runs > 1 needs fixed_shapes=true"),
        ("compile=fastest", "compile must be one of"),
    ],
)
def test_out_of_range_values_fail_before_training(root, override, message) -> None:
    with pytest.raises(ValueError, match=message):
        train(_cfg(root, "bad", override))
    assert not (root / "runs" / "bad").exists()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["compile=default"], "compile is not applied to stacked runs"),
        (["callbacks=early_stopping"], "stacked_runs takes no extra callbacks \\(callbacks: early_stopping\\)"),
        (["trainer.devices=2"], "stacked_runs trains in one process on one device"),
        (["trainer.gradient_clip_algorithm=value"], "clips each member's gradients by norm only"),
        (["fit=false", "ckpt_path=x.ckpt"], "stacked_runs is for training"),
    ],
)
def test_stacked_settings_that_cannot_hold_fail_before_training(root, overrides, message) -> None:
    with pytest.raises(ValueError, match=message):
        train(_cfg(root, "bad_stacked", "stacked_runs=2", "fixed_shapes=true", *overrides))
    assert not (root / "runs" / "bad_stacked").exists()


def test_existing_run_folder_is_never_overwritten(root) -> None:
    out = root / "runs" / "taken"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "best.ckpt").write_text("precious")
    with pytest.raises(InputError, match="already holds a run"):
        train(_cfg(root, "taken", "experiment=castella_only"))
    assert (out / "checkpoints" / "best.ckpt").read_text() == "precious"


@pytest.mark.parametrize(
    "extra",
    [[], ["fixed_shapes=true"], ["fixed_shapes=true", "stacked_runs=2"]],
    ids=["default", "fixed_shapes", "stacked"],
)
def test_resume_reaches_the_same_result(root, extra: list[str]) -> None:
    common = ["experiment=castella_only", "trainer.deterministic=true", *extra]
    name = "_".join(["resume", *extra]).replace("=", "")
    full = train(_cfg(root, f"{name}_full", *common, "train.max_epochs=2"))
    train(_cfg(root, f"{name}_part", *common, "train.max_epochs=1"))
    if "stacked_runs=2" in extra:  # a stacked run stopped after its first epoch, resumed in its own folder
        for info in (root / "runs" / f"{name}_part").rglob("run.json"):
            info.unlink()
        resumed = train(_cfg(root, f"{name}_part", *common, "train.max_epochs=2", "ckpt_path=last"))
        (root / "runs" / f"{name}_part").rename(root / "runs" / f"{name}_resumed")
    else:  # a run continued in a new folder from another folder's last checkpoint
        part = root / "runs" / f"{name}_part" / "checkpoints" / "last.ckpt"
        resumed = train(_cfg(root, f"{name}_resumed", *common, "train.max_epochs=2", f"ckpt_path={part}"))
    assert resumed == full
    a = torch.load(root / "runs" / f"{name}_full" / "checkpoints" / "last.ckpt", weights_only=False)
    b = torch.load(root / "runs" / f"{name}_resumed" / "checkpoints" / "last.ckpt", weights_only=False)
    assert a["epoch"] == b["epoch"] == 1
    for k in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][k], b["state_dict"][k])
    if "stacked_runs=2" in extra:  # each member's run folder: the same figures and best weights
        assert len(a["state_dict"]["stacked.class_embed__weight"]) == 2
        for seed in (2023, 2024):
            f, r = (root / "runs" / f"{name}_{kind}" / f"seed={seed}" for kind in ("full", "resumed"))
            assert (f / "test_metrics.json").read_text() == (r / "test_metrics.json").read_text()
            wf, wr = (torch.load(d / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"] for d in (f, r))
            for k in wf:
                torch.testing.assert_close(wf[k], wr[k])


def test_pretrain_is_cached_across_finetune_changes(root, caplog) -> None:
    train(_cfg(root, "cache_a", "experiment=system1", "train.batch_size=4"))
    caplog.set_level(logging.INFO, logger="amr.train")
    caplog.clear()
    train(_cfg(root, "cache_b", "experiment=system1", "train.batch_size=6"))
    assert "reusing cached stage" in caplog.text
    key_a = json.loads((root / "runs" / "cache_a" / "pretrain.json").read_text())["key"]
    key_b = json.loads((root / "runs" / "cache_b" / "pretrain.json").read_text())["key"]
    assert key_a == key_b
    assert pretrain_key(_cfg(root, "c", "experiment=system2")) == key_a  # same pretrain stage
    assert pretrain_key(_cfg(root, "c", "experiment=baseline")) != key_a  # no augmentation in pretrain
    assert pretrain_key(_cfg(root, "c", "experiment=system1", "pretrain.batch_size=4")) != key_a
    # the decoder picks the best epoch: a non-official one is part of the key, the official one is not
    assert pretrain_key(_cfg(root, "c", "experiment=system1", "decode=detr")) == key_a
    assert pretrain_key(_cfg(root, "c", "experiment=system1", "decode=saliency")) != key_a


def test_multirun_two_jobs(root) -> None:
    sweep = root / "sweep"
    env = dict(os.environ, WANDB_MODE="disabled")
    cmd = [
        sys.executable,
        "-m",
        "amr.training.run",
        "-m",
        "experiment=castella_only",
        "debug=fast",
        "logger=csv",
        "seed=1,2",
        f"paths.root={root}",
        f"hydra.sweep.dir={sweep}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = sorted(sweep.glob("*/test_metrics.json"))
    assert len(metrics) == 2
    assert all((m.parent / ".hydra" / "config.yaml").is_file() for m in metrics)
    assert all((m.parent / "logs" / "finetune" / "metrics.csv").is_file() for m in metrics)


def test_wandb_offline_one_run_per_stage(root, monkeypatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(root / "wandb_home"))
    train(_cfg(root, "wb", "experiment=system1", "logger=wandb", "reuse_pretrain=false"))
    runs = sorted((root / "runs" / "wb").rglob("offline-run-*"))
    assert len(runs) == 2  # pretrain and finetune, each its own W&B run
    assert (root / "runs" / "wb" / "pretrain" / "checkpoints" / "best.ckpt").is_file()  # not cached


@pytest.mark.slow
def test_ddp_on_cpu_metric_matches_single_process(root) -> None:
    """Two gloo processes: the distributed metric equals a single-process evaluation of the same
    (gathered) predictions."""
    from amr.metrics.predictions import evaluate_files

    env = dict(os.environ, WANDB_MODE="disabled")
    out = root / "runs" / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "amr.training.run",
        "experiment=castella_only",
        "debug=fast",
        "logger=none",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "train.max_epochs=1",
        f"paths.root={root}",
        f"hydra.run.dir={out}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((out / "run.json").read_text())
    single = evaluate_files(out / "predictions" / "test_preds.jsonl", info["annotations"]["test"])
    assert json.loads((out / "test_metrics.json").read_text()) == single


@pytest.mark.parametrize(
    ("override", "check"),
    [
        ("hydra/launcher=joblib", lambda h: "Joblib" in h.launcher._target_),
        ("hydra/launcher=submitit_slurm", lambda h: "SlurmLauncher" in h.launcher._target_),
        ("hparams_search=optuna", lambda h: "Optuna" in h.sweeper._target_ and h.sweeper.direction == "maximize"),
    ],
)
def test_cluster_launchers_and_search_compose(root, override, check) -> None:
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(
            "train", overrides=[override, "experiment=system1", f"paths.root={root}"], return_hydra_config=True
        )
    assert check(cfg.hydra)


def test_taken_run_folder_is_refused_before_hydra_writes(root) -> None:
    out = root / "runs" / "taken_cli"
    (out / ".hydra").mkdir(parents=True)
    (out / ".hydra" / "config.yaml").write_text("precious")
    (out / "test_metrics.json").write_text("{}")
    proc = subprocess.run(
        [sys.executable, "-m", "amr.training.run", "experiment=castella_only", f"hydra.run.dir={out}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "already holds a run" in proc.stderr
    assert (out / ".hydra" / "config.yaml").read_text() == "precious"


def test_tensorboard_logger_writes_events(root) -> None:
    pytest.importorskip("tensorboard")
    train(_cfg(root, "tb", "experiment=castella_only", "logger=tensorboard", "+trainer.fast_dev_run=1"))
    assert list((root / "runs" / "tb" / "logs" / "finetune").glob("events.out.tfevents.*"))


def test_best_checkpoint_is_weights_only_and_the_cache_keeps_one_copy(root) -> None:
    train(_cfg(root, "sizes", "experiment=system1", "seed=7"))
    ckpts = root / "runs" / "sizes" / "checkpoints"
    best = torch.load(ckpts / "best.ckpt", weights_only=True)
    last = torch.load(ckpts / "last.ckpt", weights_only=True)
    assert "optimizer_states" not in best and "optimizer_states" in last  # resuming needs only last
    assert (ckpts / "best.ckpt").stat().st_size <= (ckpts / "last.ckpt").stat().st_size / 2
    entry = Path(json.loads((root / "runs" / "sizes" / "pretrain.json").read_text())["checkpoint"]).parent
    assert (entry / "best.ckpt").is_file() and not (entry / "checkpoints").exists()
    assert "optimizer_states" not in torch.load(entry / "best.ckpt", weights_only=True)
    # the weights-only best checkpoint initialises a run; one of another model config is refused up front
    init = f"init_from={ckpts / 'best.ckpt'}"
    assert set(train(_cfg(root, "init_ok", "experiment=castella_only", init, "+trainer.fast_dev_run=1"))) == {
        "val",
        "test",
    }
    with pytest.raises(InputError, match="weights do not fit this run's model config: .*shape mismatch"):
        train(_cfg(root, "init_bad", "experiment=castella_only", init, "model.hidden_dim=128", "model.nheads=8"))


def test_monitor_picks_the_best_checkpoint(root) -> None:
    """``monitor`` names the validation metric whose first maximum is the best checkpoint."""
    import csv

    train(_cfg(root, "mon", "experiment=castella_only", "monitor=mAP", "train.max_epochs=4", "logger=csv"))
    run = root / "runs" / "mon"
    rows = [r for r in csv.DictReader((run / "logs" / "finetune" / "metrics.csv").open()) if r.get("val/mAP")]
    by_epoch = {int(r["epoch"]): float(r["val/mAP"]) for r in rows}
    first_max = min(e for e, v in by_epoch.items() if v == max(by_epoch.values()))
    assert torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)["epoch"] == first_max
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert any("'monitor': 'val/mAP'" in k for k in last["callbacks"])
    with pytest.raises(ValueError, match=r"monitor must be one of \['R1@0.5', 'R1@0.7', 'mAP'"):
        train(_cfg(root, "mon_bad", "experiment=castella_only", "monitor=R1@0.9"))


@pytest.mark.parametrize("shown", [True, False])
def test_run_start_says_its_folder_and_config(root, caplog, shown) -> None:
    caplog.set_level(logging.INFO, logger="amr.train")
    run = f"said_{shown}"
    train(_cfg(root, run, "experiment=castella_only", "+trainer.fast_dev_run=1", f"print_config={shown}"))
    first = [r.getMessage() for r in caplog.records if r.name == "amr.train"]
    assert first[0] == f"run folder: {(root / 'runs' / run).resolve()}"
    assert (first[1].startswith("config (resolved):\nexperiment_name: castella_only\n")) is shown
    assert f"run folder: {(root / 'runs' / run).resolve()}\n" in first[-1]  # and again under the results


def test_a_resume_never_writes_into_a_finished_or_another_run(root) -> None:
    """``ckpt_path`` continues the unfinished run whose last checkpoint it is, in its own folder, or
    starts a new folder; a finished run, another run's folder and a weights-only checkpoint are
    refused before anything is written (on the command line before Hydra writes, too)."""
    train(_cfg(root, "victim", "experiment=castella_only"))
    train(_cfg(root, "other", "experiment=castella_only", "seed=5"))
    victim, other = root / "runs" / "victim", root / "runs" / "other"
    before = {p: p.read_bytes() for p in victim.rglob("*") if p.is_file()}
    best, last = victim / "checkpoints" / "best.ckpt", other / "checkpoints" / "last.ckpt"
    cases = [
        (victim, f"ckpt_path={best}", f"ckpt_path={best} is not its last checkpoint"),
        (victim, f"ckpt_path={last}", f"ckpt_path={last} is not its last checkpoint"),
        (victim, "ckpt_path=last", "this run has finished: nothing to resume"),
        (
            root / "runs" / "fresh",
            f"ckpt_path={best}",
            f"a weights-only checkpoint cannot resume training: .*init_from={best}",
        ),
    ]
    for folder, resume, message in cases:
        with pytest.raises(InputError, match=message.replace("[", r"\[")):
            train(_cfg(root, folder.name, "experiment=castella_only", resume))
        argv = ["experiment=castella_only", "debug=fast", f"paths.root={root}", f"hydra.run.dir={folder}", resume]
        proc = subprocess.run(
            [sys.executable, "-m", "amr.training.run", *argv], capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 2 and re.search(message, proc.stderr.strip().splitlines()[-1]), proc.stderr[-800:]
    assert {p: p.read_bytes() for p in victim.rglob("*") if p.is_file()} == before
    assert not (root / "runs" / "fresh" / "checkpoints").exists()
    # another folder's last checkpoint continues that run in a new folder; the source is only read
    source = {p: p.read_bytes() for p in other.rglob("*") if p.is_file()}
    train(_cfg(root, "continued", "experiment=castella_only", "seed=5", "train.max_epochs=3", f"ckpt_path={last}"))
    assert {p: p.read_bytes() for p in other.rglob("*") if p.is_file()} == source
    assert torch.load(root / "runs" / "continued" / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 2


def test_two_resumes_of_one_run_at_once_are_refused(root) -> None:
    """The second resume of a run while one is resuming it is one line (both would train and log
    the same epochs); once the first is done, the run resumes."""
    from filelock import FileLock

    train(_cfg(root, "busy", "experiment=castella_only", "train.max_epochs=1"))
    run = root / "runs" / "busy"
    (run / "run.json").unlink()  # as a run stopped after its first epoch leaves it
    holder = FileLock(str(run / ".resume.lock"))
    holder.acquire()
    try:
        with pytest.raises(InputError, match="busy: another process is resuming this run now"):
            train(_cfg(root, "busy", "experiment=castella_only", "train.max_epochs=2", "ckpt_path=last"))
    finally:
        holder.release()
    train(_cfg(root, "busy", "experiment=castella_only", "train.max_epochs=2", "ckpt_path=last"))
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1
