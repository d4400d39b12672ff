"""What happens when things go wrong: nothing an earlier command wrote is lost or overwritten, and
bad input is one line naming the file, line or key."""

from __future__ import annotations

import csv
import errno
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from amr.cli import main
from amr.data.annotations import load_annotations
from amr.data.features import load_npz_array
from amr.errors import InputError
from amr.io import write_json
from amr.training.run import CONF_DIR, train
from tests.helpers import random_checkpoint

GT = {"qid": "1", "query": "a dog barks", "vid": "v", "duration": 30, "relevant_windows": [[2, 8]]}
PRED = {"qid": "1", "query": "a dog barks", "vid": "v", "pred_relevant_windows": [[2, 8, 0.9], [10, 12, 0.5]]}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _files(tmp_path: Path) -> tuple[Path, Path]:
    gt, pred = tmp_path / "gt.jsonl", tmp_path / "pred.jsonl"
    gt.write_text(json.dumps(GT) + "\n")
    pred.write_text(json.dumps(PRED) + "\n")
    return gt, pred


def _one_error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    return err[0]


def test_an_output_never_replaces_an_input_or_an_existing_file(tmp_path, capsys) -> None:
    gt, pred = _files(tmp_path)
    before = {p: _sha(p) for p in (gt, pred)}
    line = _one_error(capsys, ["evaluate", str(pred), str(gt), "--out", str(pred)])
    assert line == f"error: {pred}: output would replace an input of this command; choose another output"
    line = _one_error(capsys, ["backtranslate", str(gt), "--out", str(gt)])
    assert line.startswith(f"error: {gt}: output would replace an input")
    sub = tmp_path / "submission.jsonl"
    main(["submission", str(pred), "--out", str(sub)])
    first = _sha(sub)
    line = _one_error(capsys, ["submission", str(pred), "--out", str(sub)])
    assert line == f"error: {sub}: output exists; pass --overwrite to replace it"
    assert _sha(sub) == first and {p: _sha(p) for p in (gt, pred)} == before
    main(["submission", str(pred), "--out", str(sub), "--overwrite"])
    assert json.loads(sub.read_text())["pred_relevant_windows"] == [[2.0, 8.0], [10.0, 12.0]]


def test_files_are_created_with_the_users_umask(tmp_path) -> None:
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644


def test_infinity_is_refused_like_nan(tmp_path, capsys) -> None:
    gt, _ = _files(tmp_path)
    bad = tmp_path / "inf.jsonl"
    bad.write_text('{"qid": "1", "pred_relevant_windows": [[0.0, Infinity, 0.5]]}\n')
    line = _one_error(capsys, ["evaluate", str(bad), str(gt)])
    assert line.startswith(f"error: {bad}:1: qid 1: window [0.0, inf, 0.5] has a non-numeric")
    _one_error(capsys, ["submission", str(bad), "--out", str(tmp_path / "s.jsonl")])
    assert not (tmp_path / "s.jsonl").exists()


def test_undecodable_and_truncated_inputs_are_one_line(tmp_path) -> None:
    ann = tmp_path / "ann.jsonl"
    ann.write_bytes(json.dumps(GT).encode() + b"\n" + b'{"qid": "2", "query": "caf\xe9"}\n')
    with pytest.raises(InputError, match=rf"^{ann}:2: not UTF-8 text"):
        load_annotations(ann)
    npz = tmp_path / "v.npz"
    np.savez(npz, features=np.ones((5, 768), dtype=np.float32))
    npz.write_bytes(npz.read_bytes()[:200])
    with pytest.raises(InputError, match=rf"^{npz}: unreadable npz \("):
        load_npz_array(npz, "features")


def _cfg(root: Path, run: str, *overrides: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(
            "train",
            overrides=["debug=fast", f"paths.root={root}", f"paths.output_dir={root / run}", *overrides],
        )


@pytest.mark.parametrize(
    ("override", "message"),
    [("data.max_a_l=0", r"data\.max_a_l must be >= 1"), ("data.clip_len=0", r"data\.clip_len must be > 0")],
)
def test_zero_sizes_are_refused_before_data(tmp_path, override, message) -> None:
    with pytest.raises(ValueError, match=message):
        train(_cfg(tmp_path, "bad", "experiment=castella_only", override))
    assert not (tmp_path / "outputs").exists()


def test_a_checkpoint_for_other_features_and_zero_frames_are_refused(tmp_path, capsys) -> None:
    ckpt = random_checkpoint(tmp_path / "m512.ckpt", aud_dim=512, txt_dim=512)
    feats = tmp_path / "f.npz"
    np.savez(feats, features=np.ones((20, 768), dtype=np.float32))
    argv = ["predict", "--ckpt", str(ckpt), "--audio", str(feats), "--query", "x"]
    line = _one_error(capsys, argv)
    assert line == (
        f"error: {ckpt}: the model expects 512-d audio and 512-d text features; "
        "msclap2023 features are 768-d audio and 768-d text"
    )
    for frames in ("0", "1"):  # one frame per window: every moment would be the same second
        line = _one_error(capsys, [*argv, "--max-frames", frames])
        assert line.startswith(f"error: --max-frames: must be at least 2, got {frames} (a window of one frame")


FULL_DISK = """
import errno, io, sys, torch
real_save = torch.save

class Full(io.RawIOBase):  # a file that takes 1000 bytes, then the disk is full
    def __init__(self, f):
        self.f, self.n = f, 0

    def writable(self):
        return True

    def write(self, b):
        self.n += len(b)
        if self.n > 1000:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.f.write(b)

def full_disk(obj, f, *args, **kwargs):
    if isinstance(f, io.BufferedWriter):  # a checkpoint file (an in-memory buffer still works)
        f = io.BufferedWriter(Full(f), buffer_size=256)
    return real_save(obj, f, *args, **kwargs)

torch.save = full_disk
from amr.training.run import main
sys.argv = ["amr-train", *sys.argv[1:]]
main()
"""


def test_full_disk_during_a_checkpoint_leaves_the_last_one_and_the_run_resumes(tmp_path) -> None:
    common = ["experiment=castella_only", "logger=csv"]
    train(_cfg(tmp_path, "run", *common, "train.max_epochs=1"))
    (tmp_path / "run" / "run.json").unlink()  # as a run stopped after its first epoch leaves it
    ckpts = tmp_path / "run" / "checkpoints"
    before = {p.name: _sha(p) for p in ckpts.iterdir()}
    # the disk fills while torch writes a checkpoint: torch raises a RuntimeError over the OSError
    args = ["debug=fast", f"paths.root={tmp_path}", f"hydra.run.dir={tmp_path / 'run'}", *common]
    proc = subprocess.run(
        [sys.executable, "-c", FULL_DISK, *args, "train.max_epochs=2", "ckpt_path=last"],
        capture_output=True,
        text=True,
        env=dict(os.environ, WANDB_MODE="disabled"),
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: {ckpts}/last.ckpt: No space left on device while saving this checkpoint "
        "(the previous one is kept; resume with ckpt_path=last)"
    )
    assert "Traceback" not in proc.stderr
    assert {p.name: _sha(p) for p in ckpts.iterdir()} == before  # intact, no temporary file left
    train(_cfg(tmp_path, "run", *common, "train.max_epochs=2", "ckpt_path=last"))
    assert torch.load(ckpts / "last.ckpt", weights_only=True)["epoch"] == 1
    # the CSV rows of the attempts before each resume are kept, and read back in order
    from amr.results.run_folder import csv_attempts

    logs = tmp_path / "run" / "logs" / "finetune"
    kept = [p.name for p in csv_attempts(logs) if p.is_file()]
    assert kept[0] == "metrics.before-resume-1.csv" and kept[-1] == "metrics.csv"
    epochs = set()
    for p in csv_attempts(logs):
        if p.is_file():
            with p.open() as f:
                epochs |= {row["epoch"] for row in csv.DictReader(f)}
    assert epochs >= {"0", "1"}


def test_interpolated_run_folder_holding_a_run_is_refused_before_hydra_writes(tmp_path) -> None:
    taken = tmp_path / "runs" / "castella_only_x"
    (taken / ".hydra").mkdir(parents=True)
    (taken / ".hydra" / "config.yaml").write_text("precious")
    (taken / "test_metrics.json").write_text("{}")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "amr.training.run",
            "experiment=castella_only",
            f"hydra.run.dir={tmp_path}/runs/${{experiment_name}}_x",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, WANDB_MODE="disabled"),
    )
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: {taken}: run folder already holds a run; " + (
        "pick another hydra.run.dir, or resume it with ckpt_path=last"
    )
    assert (taken / ".hydra" / "config.yaml").read_text() == "precious"


def test_default_run_folders_of_concurrent_runs_differ(tmp_path) -> None:
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"paths.root={tmp_path}"], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    assert str(OmegaConf.select(cfg, "hydra.run.dir")).endswith(f"_{os.getpid()}")  # the process id: never shared


def test_more_frames_than_the_duration_is_a_warning(tmp_path, caplog) -> None:
    from amr.data.dataset import SplitData
    from amr.data.synth import generate

    layout = generate(tmp_path / "syn", "castella", seed=3, scale=0.02)
    vid = load_annotations(layout.annotations("val"))[0].vid
    np.savez(layout.features.audio_file(vid), features=np.ones((1000, 768), dtype=np.float32))
    with caplog.at_level("WARNING"):
        SplitData.load(layout, "val", tmp_path / "cache")
    assert f"1 recording(s) have more frames than their annotated duration allows at 1 frame/s (first: {vid}, 1000" in (
        caplog.text
    )


def test_a_feature_file_rewritten_with_its_old_size_and_mtime_is_repacked_and_verify_finds_nan(tmp_path) -> None:
    from amr.data.dataset import SplitData
    from amr.data.synth import generate

    layout = generate(tmp_path / "syn", "castella", seed=4, scale=0.02)
    SplitData.load(layout, "val", tmp_path / "cache")
    vid = load_annotations(layout.annotations("val"))[0].vid
    path = layout.features.audio_file(vid)
    st = path.stat()
    with np.load(path) as z:
        arr = z["features"].copy()
    arr[3, 5] = np.nan  # same shape, same dtype: the same size on disk
    with open(path, "r+b") as f:
        np.savez(f, features=arr)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns
    with pytest.raises(InputError, match=rf"^{path}: NaN or inf in features \(first at row 3\)"):
        SplitData.load(layout, "val", tmp_path / "cache")
    # a pack damaged after it was built: data.verify=true re-checks every array
    arr[3, 5] = 0.0
    np.savez(path, features=arr)
    data = SplitData.load(layout, "val", tmp_path / "cache")
    raw = np.memmap(data.audio.folder / "data.bin", dtype=data.audio.dtype, mode="r+")
    raw[7] = np.inf
    raw.flush()
    with pytest.raises(InputError, match=r"NaN or inf in '.+' \(row \d+\)"):
        SplitData.load(layout, "val", tmp_path / "cache", verify=True)
    SplitData.load(layout, "val", tmp_path / "cache")  # without verify the pack is trusted as built


def test_resuming_a_run_that_never_saved_names_the_way_out(tmp_path) -> None:
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(InputError, match=r"no last\.ckpt: the run stopped before its first epoch ended; .*rm -r"):
        train(_cfg(tmp_path, "run", "experiment=castella_only", "ckpt_path=last"))
    # killed in pre-training: the run folder holds only Hydra's record; the pre-training cache resumes
    (tmp_path / "pre" / ".hydra").mkdir(parents=True)
    with pytest.raises(
        InputError, match=r"pre: no checkpoints/last\.ckpt: the run stopped before its main stage began"
    ):
        train(_cfg(tmp_path, "pre", "experiment=system1", "ckpt_path=last"))


def test_an_unwritable_output_folder_is_one_line(tmp_path, capsys, monkeypatch) -> None:
    """(Permissions cannot be tested as root: the operating system's refusal is simulated.)"""
    import tempfile

    _, pred = _files(tmp_path)

    def refuse(*args, dir=None, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(dir))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    line = _one_error(capsys, ["submission", str(pred), "--out", str(tmp_path / "ro" / "s.jsonl")])
    assert line == f"error: {tmp_path / 'ro'}: Permission denied"


def _sweep(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, WANDB_MODE="disabled")
    common = ["debug=fast", "pretrain=none", "logger=csv", f"paths.root={tmp_path}"]
    cmd = [sys.executable, "-m", "amr.training.run", "-m", *common, *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def test_a_failing_sweep_job_fails_alone_and_the_sweep_names_it(tmp_path) -> None:
    """The first of four jobs is refused (a negative learning rate): the other three still run and
    finish, the failed one is one line on stderr with its traceback in its own train.log, and the
    sweep ends naming it with a non-zero exit status."""
    sweep = tmp_path / "sweep"
    proc = _sweep(tmp_path, "train.max_epochs=1", "optim.lr=-1,1e-4,2e-4,3e-4", f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 1, proc.stderr[-2000:]
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert len(jobs) == 4 and [j.name.startswith("0_") for j in jobs] == [True, False, False, False]
    assert [(j / "test_metrics.json").is_file() for j in jobs] == [False, True, True, True]
    failed = jobs[0]
    assert f"error: job {failed.name}: optim.lr must be > 0, got -1.0" in proc.stderr.splitlines()
    summary = proc.stderr[proc.stderr.index("job(s) of the sweep failed") :].splitlines()
    assert summary[1].strip() == f"{failed.name}: optim.lr must be > 0, got -1.0" and len(summary) == 2
    assert "Traceback" in (failed / "train.log").read_text() and "Traceback" not in proc.stderr


def test_a_failing_job_leaves_its_joblib_sibling_running(tmp_path) -> None:
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    sweep = tmp_path / "sweep"
    proc = _sweep(
        tmp_path,
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "train.max_epochs=2",
        "optim.lr=-1,1e-4",
        f"hydra.sweep.dir={sweep}",
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    finished = [p.parent.name for p in sweep.glob("*/test_metrics.json")]
    assert finished == ["1_default,lr=0.0001,seed=2023"]
    assert "1 job(s) of the sweep failed" in proc.stderr


@pytest.mark.parametrize("how", ["-cd", "--config-dir=", "sweep"])
def test_a_config_dir_of_ones_own_adds_its_experiments(tmp_path, how) -> None:
    """``-cd DIR``/``--config-dir=DIR`` (Hydra's own ways to add configs) pass the pre-flight
    composition, in a run and in a sweep (it refused them: ``Could not find 'experiment/myexp'``)."""
    mine = tmp_path / "myconf" / "experiment"
    mine.mkdir(parents=True)
    body = "defaults:\n  - override /pretrain: none\nexperiment_name: myexp\ntrain:\n  max_epochs: 1\n"
    (mine / "myexp.yaml").write_text("# @package _global_\n" + body)
    option = ["-cd", str(mine.parent)] if how != "--config-dir=" else [f"--config-dir={mine.parent}"]
    env = dict(os.environ, WANDB_MODE="disabled")
    where = (
        [f"hydra.sweep.dir={tmp_path / 'out'}", "seed=1,2"] if how == "sweep" else [f"hydra.run.dir={tmp_path / 'out'}"]
    )
    cmd = [sys.executable, "-m", "amr.training.run", *(["-m"] if how == "sweep" else []), *option]
    cmd += ["experiment=myexp", "debug=fast", "logger=csv", f"paths.root={tmp_path}", *where]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    infos = [json.loads(p.read_text()) for p in sorted((tmp_path / "out").rglob("run.json"))]
    assert len(infos) == (2 if how == "sweep" else 1) and all(i["experiment"] == "myexp" for i in infos)


def test_config_source_reads_hydras_config_options() -> None:
    from amr.training.launch import CONF_DIR, config_source

    assert config_source(["experiment=x"], ["experiment=x"]) == (CONF_DIR, "train", ["experiment=x"])
    d, name, over = config_source(
        ["-cn", "other", "-cd", "/a", "hydra.searchpath=[pkg://x]"], ["hydra.searchpath=[pkg://x]"]
    )
    assert (d, name, over) == (CONF_DIR, "other", ["hydra.searchpath=[file:///a,pkg://x]"])
    assert config_source(["--config-path=/elsewhere/conf"], [])[0] == "/elsewhere/conf"


@pytest.mark.parametrize("key", ["data.root", "pretrain.data.root"])
def test_a_mistyped_data_root_is_an_error_not_a_new_synthetic_set(tmp_path, key) -> None:
    """With a synthetic data config, a ``data.root`` that holds no dataset is refused (it generated
    a new synthetic set at the typo and trained on it); the set is generated only at its own root."""
    typo = tmp_path / "typo"
    with pytest.raises(InputError, match=r"typo: no \w+ dataset here .* generated only at its own root"):
        train(_cfg(tmp_path, "run", f"{key}={typo}"))
    assert not typo.exists() and not (tmp_path / "run").exists()
    moved = tmp_path / "elsewhere"  # asked for explicitly: the synthetic set's own root
    train(_cfg(tmp_path, "run", "pretrain=none", "train.max_epochs=1", f"data.synthetic.root={moved}"))
    assert (moved / "data" / "castella_test_release.jsonl").is_file()


def _fake_run(folder: Path, annotations: str) -> Path:
    (folder / "predictions").mkdir(parents=True)
    (folder / "predictions" / "test_preds.jsonl").write_text("")
    (folder / "run.json").write_text(json.dumps({"annotations": {"test": annotations}}))
    return folder


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (
            ["synth", "--preset", "castella", "--out", "{t}/s", "--scale", "0"],
            "--scale must be a positive number, got 0.0",
        ),
        (["synth", "--preset", "castella", "--out", "{t}/s", "--scale", "-1"], "--scale must be a positive number"),
        (
            ["synth", "--preset", "castella", "--out", "{t}/s", "--scale", "nan"],
            "--scale must be a positive number, got nan",
        ),
        (
            ["ensemble", "{t}/a", "{t}/a", "--out", "{t}/e", "--weights", "inf,1"],
            "positive finite weight per run (2), got [inf",
        ),
        (
            ["ensemble", "{t}/a", "{t}/b", "--out", "{t}/e"],
            "its test predictions are for /other.jsonl, {t}/a's for /gt.jsonl",
        ),
        (
            ["resynth", "official", "--clotho", "{t}", "--walking-tours", "{t}", "--out", "{t}/r", "--limit", "-5"],
            "--limit: must be at least 1",
        ),
        (
            ["extract-audio", "--audio-dir", "{t}", "--out", "{t}/f", "--batch-size", "0"],
            "--batch-size: must be at least 1, got 0",
        ),
        (
            ["extract-text", "--annotations", "{t}/x.jsonl", "--out", "{t}/f", "--batch-size", "0"],
            "--batch-size: must be at least 1",
        ),
        (
            ["decode", "{t}/a", "--out", "{t}/d", "--decode", "segmental", "--set", "threshold_k=inf"],
            "threshold_k must be a finite number, got inf",
        ),
        (
            ["decode", "{t}/a", "--out", "{t}/d", "--decode", "segmental", "--set", "min_len=9", "--set", "max_len=3"],
            "min_len 9 exceeds decode.max_len 3",
        ),
        (
            ["predict", "--ckpt", "{t}/x.jsonl", "--audio", "{t}/a.npz", "--query", "q"],
            "x.jsonl: not a checkpoint: not a file torch.save writes",
        ),
        (
            ["submit", "--ckpt", "{t}/x.jsonl", "--data-root", "{t}/a", "--out", "{t}/o/s.jsonl"],
            "x.jsonl: not a checkpoint: not a file torch.save writes",
        ),
    ],
)
def test_values_that_cannot_work_are_one_line(tmp_path, capsys, argv, line) -> None:
    """Values that used to be accepted (and then failed late, or wrote nonsense) are one line."""
    _fake_run(tmp_path / "a", "/gt.jsonl")
    _fake_run(tmp_path / "b", "/other.jsonl")
    (tmp_path / "x.jsonl").write_text('{"qid": 1}\n')
    np.savez(tmp_path / "a.npz", features=np.ones((5, 768), dtype=np.float32))
    before = sorted(p for p in tmp_path.rglob("*"))
    with pytest.raises(SystemExit):
        main([a.format(t=tmp_path) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and line.format(t=tmp_path) in err[0], err
    assert sorted(p for p in tmp_path.rglob("*")) == before


def test_a_run_folder_that_is_a_file_and_a_checkpoint_for_other_features_are_one_line(tmp_path) -> None:
    from tests.helpers import random_checkpoint

    (tmp_path / "afile").write_text("x")
    proc = subprocess.run(
        [sys.executable, "-m", "amr.training.run", "experiment=castella_only", f"hydra.run.dir={tmp_path / 'afile'}"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.strip().endswith(
        "afile: the run folder is a file; pick another hydra.run.dir"
    )
    ckpt = random_checkpoint(tmp_path / "m512.ckpt", aud_dim=512, txt_dim=512)
    with pytest.raises(InputError, match="m512.ckpt: the model expects 512-d audio"):
        train(_cfg(tmp_path, "eval", "experiment=castella_only", "fit=false", f"ckpt_path={ckpt}"))
    assert not (tmp_path / "outputs").exists()  # refused before the data is generated or read


@pytest.mark.parametrize(
    ("command", "spoil", "line"),
    [
        ("decode", ("run.json", "{broken"), "run.json: not valid JSON (Expecting property name"),
        ("decode", ("run.json", "[1, 2]"), "run.json: not a JSON object"),
        ("decode", (".hydra/config.yaml", "[1"), ".hydra/config.yaml: not a readable config (while parsing"),
        ("report", ("test_metrics.json", "{bad"), "test_metrics.json: not valid JSON (Expecting property name"),
    ],
)
def test_a_run_folder_with_a_broken_record_is_one_line(tmp_path, capsys, command, spoil, line) -> None:
    gt = tmp_path / "gt.jsonl"
    gt.write_text(
        json.dumps({"qid": 1, "query": "a dog", "vid": "v", "duration": 10, "relevant_windows": [[1, 2]]}) + "\n"
    )
    run = _fake_run(tmp_path / "run", str(gt))
    (run / ".hydra").mkdir()
    (run / ".hydra" / "config.yaml").write_text("seed: 1\n")
    (run / "test_metrics.json").write_text("{}")
    name, text = spoil
    (run / name).write_text(text)
    argv = ["decode", str(run), "--out", str(tmp_path / "d")] if command == "decode" else ["report", str(run)]
    with pytest.raises(SystemExit):
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and line in err[0], err


def test_a_read_only_run_folder_is_one_line_before_hydra_writes(tmp_path, capsys, monkeypatch) -> None:
    """(Permissions cannot be tested as root: the operating system's answer is simulated.)"""
    from amr.training.launch import LAUNCH_ENV, preflight

    monkeypatch.setenv(LAUNCH_ENV, "restored after the test")  # preflight sets it for its launch
    locked = tmp_path / "locked"
    locked.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == locked else real(p, mode))
    with pytest.raises(SystemExit):
        preflight(["experiment=castella_only", f"hydra.run.dir={locked / 'run'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"error: {locked / 'run'}: cannot write the run folder: {locked} is read-only; pick another hydra.run.dir"
    ]
    assert not (locked / "run").exists()
