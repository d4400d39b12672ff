"""The encoder as a config group (``features``): MS-CLAP 2023 by default, bit for bit as before, and
features a user brings (``features=custom``) of other widths through training, prediction,
submission and reports; mismatches between a checkpoint and its features are one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from amr.checkpoints import Checkpoint
from amr.cli import main
from amr.data.dataset import SplitData
from amr.data.features import AUDIO_KEY, TEXT_KEY, Encoder
from amr.data.synth import custom_encoder
from amr.errors import InputError
from amr.training.run import train
from tests.helpers import debug_config, random_checkpoint

CUSTOM = ["features=custom", "features.audio_dim=1024", "features.text_dim=512"]


@pytest.fixture(scope="module")
def custom_run(tmp_path_factory) -> tuple[Path, Path]:
    """``amr-train debug=fast features=custom features.audio_dim=1024 features.text_dim=512``: the
    synthetic default gets a feature set of those widths, and both stages train on it."""
    root = tmp_path_factory.mktemp("encoders")
    train(debug_config(root, "run", *CUSTOM))
    return root, root / "run"


def _width(folder: Path, key: str) -> int:
    with np.load(next(folder.glob("*.npz"))) as z:
        return int(z[key].shape[1])


def test_features_custom_trains_on_a_synthetic_set_of_its_widths(custom_run) -> None:
    """features=custom with features.audio_dim=1024 and features.text_dim=512 (the fixture's run)."""
    root, run = custom_run
    assert (run / "test_metrics.json").is_file()
    feats = next((root / "outputs" / ".cache").glob("synthetic_tiny/*/features/castella"))
    assert _width(feats / "custom", AUDIO_KEY) == 1024 and _width(feats / "custom_text", TEXT_KEY) == 512
    assert _width(feats / "custom_text_versions" / "de", TEXT_KEY) == 512  # paraphrases too
    assert _width(feats / "clap", AUDIO_KEY) == 768  # the MS-CLAP-shaped set is left as it is
    ckpt = Checkpoint.read(run / "checkpoints" / "best.ckpt")
    assert ckpt.encoder == Encoder("custom", "custom", "custom_text", 1024, 512)  # features.name, .audio, .text
    assert ckpt.state["model.input_aud_proj.0.LayerNorm.weight"].shape == (1026,)  # 1024 + 2 time features
    assert ckpt.hyper_parameters["model"]["txt_dim"] == 512
    # the pre-training (cached) trained on the same features: its key names them
    cached = list((root / "outputs" / "pretrain_cache").glob("*/best.ckpt"))
    assert [Checkpoint.read(p).encoder.name for p in cached] == ["custom"]


def test_a_custom_checkpoint_predicts_submits_and_reports(custom_run, tmp_path, capsys) -> None:
    root, run = custom_run
    ckpt = run / "checkpoints" / "best.ckpt"
    feats = next((root / "outputs" / ".cache").glob("synthetic_tiny/*/features/castella"))
    audio = sorted((feats / "custom").glob("*.npz"))[0]
    query = sorted((feats / "custom_text").glob("*.npz"))[0]
    main(["predict", "--ckpt", str(ckpt), "--audio", str(audio), "--query-features", str(query), "--json"])
    out = capsys.readouterr()
    assert "features: custom (the checkpoint's)" in out.err
    moments = json.loads(out.out)["moments"]
    assert len(moments) == 5 and all(0 <= m["start"] < m["end"] for m in moments)
    # raw audio or a text query cannot be turned into features amr does not compute: one line each
    wav = tmp_path / "a.wav"
    import soundfile as sf

    sf.write(wav, np.zeros(44_100 * 2), 44_100)
    for argv, what in (
        (["--audio", str(wav), "--query-features", str(query)], "does not compute from audio"),
        (["--audio", str(audio), "--query", "a dog barks"], "does not compute from text"),
        (["--audio", str(feats / "clap" / audio.name), "--query-features", str(query)], "expected (n, 1024)"),
    ):
        with pytest.raises(SystemExit):
            main(["predict", "--ckpt", str(ckpt), *argv])
        err = capsys.readouterr().err.strip().splitlines()
        assert what in err[-1] and err[-1].startswith("error: ")

    # amr submit reads the checkpoint's own feature folders of the evaluation set
    evaluation = tmp_path / "eval"
    (evaluation / "data").mkdir(parents=True)
    lines = [
        json.loads(x) for x in (feats.parent.parent / "data" / "castella_test_release.jsonl").read_text().splitlines()
    ]
    for x in lines:
        x.pop("relevant_windows")
    (evaluation / "data" / "dcase2026_evaluation.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    for sub in ("custom", "custom_text"):
        shutil.copytree(feats / sub, evaluation / "features" / "dcase2026_evaluation" / sub)
    sub_out = tmp_path / "submission.jsonl"
    main(
        [
            "submit",
            "--ckpt",
            str(ckpt),
            "--data-root",
            str(evaluation),
            "--out",
            str(sub_out),
            "--cache-dir",
            str(tmp_path),
        ]
    )
    assert [json.loads(x)["qid"] for x in sub_out.read_text().splitlines()] == [x["qid"] for x in lines]

    main(["report", str(run), "--out", str(tmp_path / "report")])
    assert "| 1 |" in capsys.readouterr().out  # one system, one seed


def test_a_wrong_width_file_and_other_features_are_one_line(custom_run, tmp_path) -> None:
    root, run = custom_run
    feats = next((root / "outputs" / ".cache").glob("synthetic_tiny/*/features/castella"))
    copy = tmp_path / "data"
    shutil.copytree(feats.parent.parent, copy)
    from amr.data.features import Layout

    layout = Layout(copy, "castella", "castella", custom_encoder(1024, 512))
    bad = sorted(layout.features.audio_dir.glob("*.npz"))[1]
    np.savez(bad, features=np.ones((30, 768), dtype=np.float32))
    with pytest.raises(InputError, match=rf"{bad}: wrong feature shape \(30, 768\), expected \(n, 1024\)"):
        SplitData.load(layout, "train" if "train" in bad.name else "test", tmp_path / "cache")

    # a checkpoint of one feature set given another's: one line naming both, before any data is read
    ckpt = run / "checkpoints" / "best.ckpt"
    for how in (["fit=false", f"ckpt_path={ckpt}"], [f"init_from={ckpt}"]):
        with pytest.raises(
            InputError,
            match="the model expects 1024-d audio and 512-d text features; "
            "msclap2023 features are 768-d audio and 768-d text",
        ):
            train(debug_config(tmp_path, "other", "experiment=castella_only", *how))
    assert not (tmp_path / "other").exists()
    # the same widths, another encoder (features.name): refused by name
    same = random_checkpoint(tmp_path / "m.ckpt")
    obj = torch.load(same, weights_only=True)
    obj["hyper_parameters"]["features"] = {"name": "castella", "feat_dir": "castella", "encoder": {"name": "m2d"}}
    torch.save(obj, same)
    with pytest.raises(InputError, match="trained on m2d features, given msclap2023 features"):
        Checkpoint.read(same).model(Encoder())
    # features=custom without its widths: refused, not read at some default width
    with pytest.raises(ValueError, match="features.audio_dim is not set: give the width of your custom features"):
        train(debug_config(tmp_path, "w", "features=custom"))
    # the network's widths follow the features group; set apart from it, they are refused
    with pytest.raises(ValueError, match="model.aud_dim must be 1024, the features.audio_dim of custom features"):
        train(debug_config(tmp_path, "w", *CUSTOM, "model.aud_dim=768"))


def test_synth_writes_a_second_feature_set_of_other_widths(tmp_path, capsys) -> None:
    """``amr synth --audio-dim A --text-dim T``: the same recordings and queries, with a feature set
    in custom/ and custom_text/ (features=custom's folders) of those widths beside MS-CLAP's."""
    main(["synth", "--preset", "castella", "--out", str(tmp_path / "s"), "--scale", "0.03"])
    main(["synth", "--preset", "castella", "--out", str(tmp_path / "t"), "--scale", "0.03"])
    main(
        ["synth", "--preset", "castella", "--out", str(tmp_path / "t"), "--scale", "0.03", "--overwrite"]
        + ["--audio-dim", "96", "--text-dim", "64"]
    )
    feats = tmp_path / "t" / "features" / "castella"
    assert _width(feats / "custom", AUDIO_KEY) == 96 and _width(feats / "custom_text", TEXT_KEY) == 64
    names = sorted(p.name for p in (feats / "clap").glob("*.npz"))
    assert names == sorted(p.name for p in (feats / "custom").glob("*.npz"))
    for f in ("castella_train_release.jsonl", "castella_test_release.jsonl"):  # the same annotations
        assert (tmp_path / "s" / "data" / f).read_text() == (tmp_path / "t" / "data" / f).read_text()
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["synth", "--preset", "castella", "--out", str(tmp_path / "u"), "--audio-dim", "96"])
    assert "give both --audio-dim and --text-dim" in capsys.readouterr().err
    # features.audio / features.text name the folders read
    from amr.data.datamodule import ensure_dataset

    data = debug_config(tmp_path, "x", "features=custom", "features.audio_dim=8", "features.text_dim=8").data
    enc = Encoder("mine", "m2d", "m2d_text", 8, 8)
    layout = ensure_dataset(data, enc)
    assert _width(layout.root / "features" / "castella" / "m2d", AUDIO_KEY) == 8
    assert _width(layout.root / "features" / "castella" / "m2d_text", TEXT_KEY) == 8


def test_a_sweep_over_encoders_is_two_systems_in_the_report(tmp_path) -> None:
    """``-m features=msclap2023,custom`` (custom at MS-CLAP's widths, so the one width override
    fits both) is one more sweep axis: two jobs, two systems named by their encoder."""
    sweep = tmp_path / "sweep"
    env = dict(os.environ, WANDB_MODE="disabled")
    cmd = [sys.executable, "-m", "amr.training.run", "-m", "debug=fast", "pretrain=none", "logger=csv"]
    cmd += [f"paths.root={tmp_path}", "features=msclap2023,custom", "features.audio_dim=768", "features.text_dim=768"]
    proc = subprocess.run([*cmd, f"hydra.sweep.dir={sweep}"], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = subprocess.run(
        [sys.executable, "-m", "amr.cli", "report", str(sweep), "--out", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert report.returncode == 0, report.stderr
    rows = [ln for ln in report.stdout.splitlines() if ln.startswith("| ") and not ln.startswith("| system |")]
    assert {r.split("|")[1].strip() for r in rows} == {"default [features=msclap2023]", "default [features=custom]"}
