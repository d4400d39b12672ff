"""MS-CLAP feature extraction, prediction and submission through the real msclap code paths, on a
random-weight MS-CLAP 2023 (real HTSAT, 1-layer GPT-2, locally trained tokenizer) served offline."""

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

from amr.clap.audio import SAMPLE_RATE, n_frames, windows
from amr.clap.tiny import COMMIT, offline_env

needs_msclap = pytest.mark.skipif(
    importlib.util.find_spec("msclap") is None, reason="msclap is not installed (pip install -e '.[clap]')"
)
sf = pytest.importorskip("soundfile")

# name -> (seconds, sample rate, channels); frames = floor(seconds), +1 centered
GOOD = {"a": (3.4, 32_000, 1), "b": (2.0, 48_000, 2), "c": (1.5, 44_100, 1), "long": (7.5, 22_050, 1)}
CAPTIONS = {"q1": "A dog barks loudly", "q2": "rain falls softly outside", "q3": "A dog barks loudly"}


def _run(args: list[str], root: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, **offline_env(root), "WANDB_MODE": "disabled"}
    proc = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"rc {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def _amr(args: list[str], root: Path, check: bool = True) -> subprocess.CompletedProcess:
    return _run(["-m", "amr.cli", *args], root, check)


@pytest.fixture(scope="module")
def clap(tmp_path_factory) -> Path:
    if importlib.util.find_spec("msclap") is None:
        pytest.skip("msclap is not installed (pip install -e '.[clap]')")
    root = tmp_path_factory.mktemp("tiny_clap")
    _run(["-m", "amr.clap.tiny", str(root)], root)
    return root


def _wav_sample_rate_zero(path: Path) -> None:
    data = np.zeros(400, dtype="<i2").tobytes()
    fmt = struct.pack("<HHIIHH", 1, 1, 0, 0, 2, 16)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("audio")
    rng = np.random.default_rng(0)
    for name, (sec, sr, ch) in GOOD.items():
        x = 0.1 * rng.standard_normal((int(round(sec * sr)), ch)).astype(np.float32)
        sf.write(d / (f"{name}.flac" if ch == 2 else f"{name}.wav"), x, sr)
    sf.write(d / "short.wav", 0.1 * rng.standard_normal(int(0.6 * SAMPLE_RATE)).astype(np.float32), SAMPLE_RATE)
    sf.write(d / "silent.wav", np.zeros(2 * SAMPLE_RATE, dtype=np.float32), SAMPLE_RATE)
    sf.write(d / "empty.wav", np.zeros(0, dtype=np.float32), SAMPLE_RATE)
    (d / "garbage.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk" * 8)
    _wav_sample_rate_zero(d / "rate0.wav")
    (d / "notes.txt").write_text("not audio, not listed")
    return d


def test_frame_counts_follow_the_official_windowing() -> None:
    for sec in (0.4, 1.0, 1.5, 59.99, 60.0, 300.2):
        n = int(round(sec * SAMPLE_RATE))
        assert n_frames(n) == int(np.floor(n / SAMPLE_RATE))
        assert n_frames(n, centered=True) == int(np.floor(n / SAMPLE_RATE)) + 1
        x = np.arange(n, dtype=np.float32)
        w = windows(x)
        assert w.shape == (n_frames(n), SAMPLE_RATE)
        if len(w) > 1:  # frame i covers [i, i + 1) s
            assert w[1, 0] == SAMPLE_RATE and w[-1, -1] == len(w) * SAMPLE_RATE - 1
        c = windows(x, centered=True)  # frame i is centred at i s: half a window of zeros first
        assert c.shape == (n_frames(n, True), SAMPLE_RATE)
        assert c[0, : SAMPLE_RATE // 2].sum() == 0 and c[0, SAMPLE_RATE // 2] == 0.0
        if len(c) > 1:
            assert c[1, 0] == SAMPLE_RATE // 2


def test_torchaudio_standin_when_the_wheel_cannot_load(tmp_path, monkeypatch) -> None:
    """PyPI's torchaudio is a CUDA build that raises OSError beside a CPU torch: the stand-in serves."""
    import builtins

    from amr.clap import compat

    saved = {m: sys.modules.pop(m) for m in list(sys.modules) if m.split(".")[0] == "torchaudio"}
    original = builtins.__import__

    def failing(name, *args, **kwargs):
        if name.split(".")[0] == "torchaudio":
            raise OSError("libc10_cuda.so: cannot open shared object file")
        return original(name, *args, **kwargs)

    try:
        monkeypatch.setattr(builtins, "__import__", failing)
        compat.ensure_torchaudio()
        monkeypatch.setattr(builtins, "__import__", original)
        ta = sys.modules["torchaudio"]
        assert ta.__version__.endswith("amr-standin")
        assert importlib.util.find_spec("torchaudio") is not None  # transformers' availability probe
        x = np.sin(np.linspace(0, 200, 32_000)).astype(np.float32)
        sf.write(tmp_path / "x.wav", x, 32_000)
        wave, sr = ta.load(tmp_path / "x.wav")
        assert sr == 32_000 and wave.shape == (1, 32_000)
        np.testing.assert_allclose(wave[0].numpy(), x, atol=1e-4)  # 16-bit PCM
        y = ta.transforms.Resample(32_000, SAMPLE_RATE)(wave)
        assert y.shape == (1, SAMPLE_RATE) and y.dtype == torch.float32
    finally:
        for m in [m for m in sys.modules if m.split(".")[0] == "torchaudio"]:
            del sys.modules[m]
        sys.modules.update(saved)


def test_project_imports_without_msclap() -> None:
    code = (
        "import sys, amr, amr.cli, amr.predict, amr.clap.extract, amr.train; "
        "assert amr.Predictor.__name__ == 'Predictor'; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('msclap', 'torchaudio')]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


@needs_msclap
def test_extract_audio_frames_names_failures_and_resume(clap, audio_dir, tmp_path) -> None:
    out = tmp_path / "features" / "castella"
    args = ["extract-audio", "--audio-dir", str(audio_dir), "--out", str(out)]
    args += ["--clap-weights", str(clap / "clap_weights.pth"), "--max-seconds", "5", "--batch-size", "3"]
    proc = _amr(args, clap, check=False)
    assert proc.returncode == 1, proc.stderr  # bad files do not stop the folder, but fail the run
    assert "loaded strictly" in proc.stderr
    failed = [line.strip() for line in proc.stderr.splitlines() if line.startswith("  ")]
    assert sorted(Path(line.split(":")[0]).name for line in failed) == [
        "empty.wav",
        "garbage.wav",
        "rate0.wav",
        "short.wav",
        "silent.wav",
    ]
    assert all(len(line.split("\n")) == 1 and str(audio_dir) in line for line in failed)
    files = sorted(p.name for p in (out / "clap").iterdir())
    assert files == ["a.npz", "b.npz", "c.npz", "long.npz"]  # {vid}.npz, nothing half-written
    for name, (sec, _, _) in GOOD.items():
        with np.load(out / "clap" / f"{name}.npz") as z:
            assert z.files == ["features"]
            feats = z["features"]
        assert feats.dtype == np.float32 and feats.shape == (min(int(sec), 5), 768)
        assert np.isfinite(feats).all() and np.abs(feats).sum() > 0
    # rerun: existing files are skipped untouched, the bad ones are tried again
    stamps = {p: p.stat().st_mtime_ns for p in (out / "clap").iterdir()}
    proc = _amr(args, clap, check=False)
    assert "0 audio feature file(s) written, 4 already present, 5 failed" in proc.stdout
    assert {p: p.stat().st_mtime_ns for p in (out / "clap").iterdir()} == stamps

    centered = tmp_path / "centered"
    args = ["extract-audio", "--audio-dir", str(audio_dir), "--out", str(centered), "--centered"]
    proc = _amr([*args, "--max-seconds", "0", "--clap-weights", str(clap / "clap_weights.pth")], clap, check=False)
    for name, (sec, _, _) in {**GOOD, "short": (0.6, 0, 0)}.items():
        assert np.load(centered / "clap" / f"{name}.npz")["features"].shape == (int(sec) + 1, 768)


@needs_msclap
def test_features_equal_msclap_wrapper_path(clap, audio_dir, tmp_path) -> None:
    """Our extractor against the official recipe written on msclap's own CLAPWrapper."""
    out = tmp_path / "feat"
    _amr(
        [
            "extract-audio",
            "--audio-dir",
            str(audio_dir),
            "--out",
            str(out),
            "--clap-weights",
            str(clap / "clap_weights.pth"),
        ],
        clap,
        check=False,
    )
    ann = tmp_path / "ann.jsonl"
    ann.write_text(json.dumps({"qid": "q1", "query": CAPTIONS["q1"], "vid": "c", "duration": 1.5}) + "\n")
    _amr(
        [
            "extract-text",
            "--annotations",
            str(ann),
            "--out",
            str(out),
            "--clap-weights",
            str(clap / "clap_weights.pth"),
        ],
        clap,
    )
    script = r"""
import json, sys
import numpy as np, torch
from amr.clap.compat import ensure_torchaudio
ensure_torchaudio()
from msclap import CLAP
weights, wav, feats, caption, text_feats = sys.argv[1:6]
wrapper = CLAP(model_fp=weights, version="2023", use_cuda=False)
audio, sr = wrapper.read_audio(wav, resample=True)
frames = audio[0].unfold(0, sr, sr)
with torch.no_grad():
    ref = wrapper.clap.audio_encoder.base(frames)["embedding"].numpy()
mine = np.load(feats)["features"]
out = {"audio": float(np.abs(ref - mine).max()) if ref.shape == mine.shape else None}
if hasattr(wrapper.tokenizer, "encode_plus"):  # msclap's preprocess_text needs transformers < 5
    tok = wrapper.preprocess_text([caption])
    n = int(tok["attention_mask"].sum())
    with torch.no_grad():
        hid = wrapper.clap.caption_encoder.base(**tok)[0][0, :n].numpy()
    mine = np.load(text_feats)["last_hidden_state"]
    out["text"] = float(np.abs(hid - mine).max()) if hid.shape == mine.shape else None
print(json.dumps(out))
"""
    args = [clap / "clap_weights.pth", audio_dir / "c.wav", out / "clap" / "c.npz", CAPTIONS["q1"]]
    args.append(out / "clap_text" / "qidq1.npz")
    res = json.loads(_run(["-c", script, *map(str, args)], clap).stdout.strip().splitlines()[-1])
    assert res["audio"] is not None and res["audio"] < 1e-4
    if "text" in res:
        assert res["text"] is not None and res["text"] < 1e-4


def _tokenizer(clap: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(clap / "hf_home" / "hub" / "models--gpt2" / "snapshots" / COMMIT)


@needs_msclap
def test_extract_text_with_versions_feeds_the_data_layer(clap, tmp_path) -> None:
    from amr.data.dataset import MomentDataset, SplitData
    from amr.data.features import Layout

    root = tmp_path / "root"
    layout = Layout(root, "castella", "castella")
    (root / "data").mkdir(parents=True)
    rows = [
        {"qid": q, "query": c, "vid": "a", "duration": 3.4, "relevant_windows": [[0, 2]]} for q, c in CAPTIONS.items()
    ]
    layout.annotations("train").write_text("".join(json.dumps(r) + "\n" for r in rows))
    para = layout.versions_file("train")
    versions = [
        {
            "qid": "q1",
            "query": CAPTIONS["q1"],
            "versions": [{"pivot": "de", "text": "A dog is barking loud"}],
            "dropped": [],
        },
        {
            "qid": "q2",
            "query": CAPTIONS["q2"],
            "versions": [{"pivot": "de", "text": "Rain is falling outdoors"}],
            "dropped": [],
        },
        {"qid": "q3", "query": CAPTIONS["q3"], "versions": [], "dropped": ["de"]},
    ]
    para.write_text("".join(json.dumps(v) + "\n" for v in versions))
    feat = root / "features" / "castella"
    weights = str(clap / "clap_weights.pth")
    argv = ["extract-text", "--annotations", str(layout.annotations("train")), "--paraphrases", str(para)]
    argv += ["--out", str(feat), "--clap-weights", weights]
    proc = _amr(argv, clap)
    assert "5 text feature file(s) written, 0 already present, 0 failed" in proc.stdout
    tok = _tokenizer(clap)
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    for qid, text, path in [
        *[(q, c, feat / "clap_text" / f"qid{q}.npz") for q, c in CAPTIONS.items()],
        ("q1", "A dog is barking loud", feat / "clap_text_versions" / "de" / "qidq1.npz"),
        ("q2", "Rain is falling outdoors", feat / "clap_text_versions" / "de" / "qidq2.npz"),
    ]:
        ids = tok(text + " <|endoftext|>")["input_ids"]
        assert ids[-1] == eos
        with np.load(path) as z:
            assert z.files == ["last_hidden_state"]
            assert z["last_hidden_state"].shape == (len(ids), 768), (qid, text)
    same = [np.load(feat / "clap_text" / f"qid{q}.npz")["last_hidden_state"] for q in ("q1", "q3")]
    np.testing.assert_array_equal(*same)  # identical captions: identical features

    # the data layer finds them: audio for vid "a" and the 'de' versions (q3 aliased to its original)
    (feat / "clap").mkdir()
    np.savez(feat / "clap" / "a.npz", features=np.random.default_rng(0).standard_normal((3, 768)).astype(np.float32))
    data = SplitData.load(layout, "train", tmp_path / "cache", tags=["de"])
    assert data.alias == {"de/q3": "q3"}
    de = np.load(feat / "clap_text_versions" / "de" / "qidq1.npz")["last_hidden_state"]
    np.testing.assert_allclose(np.asarray(data.text["de/q1"]), de, rtol=0, atol=1e-6)
    ds = MomentDataset(data, train=True, caption_tags=["de"])
    assert {ds[i]["version"] for i in range(len(ds))} <= {None, "de"}

    # a rerun writes nothing; a whitespace-only version text is a one-line error before any work
    proc = _amr(argv, clap)
    assert "0 text feature file(s) written, 5 already present" in proc.stdout
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps(versions[0]) + "\n" + json.dumps({**versions[1], "versions": [{"pivot": "fr", "text": "  "}]}) + "\n"
    )
    proc = _amr(
        [
            "extract-text",
            "--annotations",
            str(layout.annotations("train")),
            "--paraphrases",
            str(bad),
            "--out",
            str(tmp_path / "x"),
            "--clap-weights",
            weights,
        ],
        clap,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: {bad}:2: qid q2 version 'fr' is empty or not a string"]
    assert not (tmp_path / "x").exists()


@needs_msclap
def test_missing_hub_files_offline_are_one_line_errors(clap, audio_dir, tmp_path) -> None:
    env_root = tmp_path / "empty"  # an empty Hugging Face cache, offline
    env_root.mkdir()
    args = ["extract-audio", "--audio-dir", str(audio_dir), "--out", str(tmp_path / "f")]
    proc = _amr(args, env_root, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: microsoft/msclap: cannot get CLAP_weights_2023.pth (LocalEntryNotFoundError); pass --clap-weights PATH"
    ]
    proc = _amr([*args, "--clap-weights", str(clap / "clap_weights.pth")], env_root, check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("error: gpt2: cannot load the text encoder")
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "f" / "clap").exists() or not any((tmp_path / "f" / "clap").iterdir())


def _random_checkpoint(path: Path, **model) -> Path:
    from amr.config import LossCfg, ModelCfg, OptimCfg
    from amr.lit_module import MomentRetrievalModule

    torch.manual_seed(0)
    m = MomentRetrievalModule(model=asdict(ModelCfg(**model)), loss=asdict(LossCfg()), optim=asdict(OptimCfg()))
    torch.save({"state_dict": m.state_dict(), "hyper_parameters": dict(m.hparams)}, path)
    return path


@needs_msclap
def test_predict_cli_and_python_api_agree(clap, audio_dir, tmp_path) -> None:
    ckpt = _random_checkpoint(tmp_path / "model.ckpt")
    weights = str(clap / "clap_weights.pth")
    wav = audio_dir / "long.wav"
    argv = ["predict", "--ckpt", str(ckpt), "--audio", str(wav), "--clap-weights", weights]
    proc = _amr([*argv, "--query", "a dog barks", "--query", "rain", "--top-k", "3", "--json"], clap)
    docs = json.loads(proc.stdout)
    assert [d["query"] for d in docs] == ["a dog barks", "rain"]
    for doc in docs:
        assert len(doc["moments"]) == 3
        scores = [m["score"] for m in doc["moments"]]
        assert scores == sorted(scores, reverse=True)
        assert all(0 <= m["start"] <= m["end"] <= 7 for m in doc["moments"])  # 7 frames of 1 s
    # the Python API gives the same moments; the table form prints one row per moment
    script = (
        "import json, sys, amr, amr.cli; amr.cli.main(sys.argv[4:]); "
        "p = amr.Predictor(sys.argv[1], clap_weights=sys.argv[2]); "
        "print(json.dumps([m.to_json() for m in p.predict(sys.argv[3], 'a dog barks', top_k=3)]))"
    )
    out = _run(["-c", script, str(ckpt), weights, str(wav), *argv, "--query", "a dog barks"], clap).stdout
    assert json.loads(out.strip().splitlines()[-1]) == docs[0]["moments"]
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert [[float(x) for x in r[1:]] for r in rows[:3]] == [
        [m["start"], m["end"], m["score"]] for m in docs[0]["moments"]
    ]
    assert len(rows) == 5  # --top-k default

    # bad input: one line naming what is wrong, before any model is loaded
    for extra, expected in [
        (["--query", "   "], "error: --query: query is empty (only whitespace)"),
        (
            ["--query", "x", "--audio", str(audio_dir / "silent.wav")],
            f"error: {audio_dir / 'silent.wav'}: silent audio",
        ),
        (["--query", "x", "--ckpt", weights], f"error: {weights}: not an amr checkpoint"),
    ]:
        proc = _amr([*argv, *extra], clap, check=False)
        assert proc.returncode == 2 and proc.stderr.strip().startswith(expected), proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1


def test_checkpoint_of_another_model_config_is_refused(tmp_path) -> None:
    from amr.errors import InputError
    from amr.predict import load_module

    ckpt = _random_checkpoint(tmp_path / "a.ckpt")
    obj = torch.load(ckpt, weights_only=False)
    obj["hyper_parameters"]["model"]["hidden_dim"] = 128
    torch.save(obj, tmp_path / "b.ckpt")
    with pytest.raises(
        InputError, match=r"b\.ckpt: weights do not fit the checkpoint's model config: .*shape mismatch"
    ):
        load_module(tmp_path / "b.ckpt")
    official = {k.removeprefix("model."): v for k, v in obj["state_dict"].items() if k.startswith("model.")}
    torch.save({"model": official}, tmp_path / "c.pth")  # the official .pth layout
    with pytest.raises(InputError, match="convert-official"):
        load_module(tmp_path / "c.pth")


def test_long_recordings_are_windowed_and_merged(tmp_path) -> None:
    from amr.model import postprocess
    from amr.predict import Predictor, merge, window_starts

    assert window_starts(250, 300) == [0]
    assert window_starts(700, 300) == [0, 150, 300, 400]
    assert window_starts(301, 300) == [0, 1]
    p = Predictor(_random_checkpoint(tmp_path / "m.ckpt"), device="cpu")
    rng = np.random.default_rng(0)
    txt = rng.standard_normal((9, 768)).astype(np.float32)

    # up to 300 frames: the official post-processing of one forward pass, clamped to the recording
    frames = rng.standard_normal((120, 768)).astype(np.float32)
    got = p.predict(frames, txt, top_k=10)
    from amr.data.features import l2_normalize

    st = np.arange(120, dtype=np.float32) / 120
    aud = np.concatenate([l2_normalize(frames), np.stack([st, st + 1 / 120], 1)], 1)
    with torch.inference_mode():
        out = p.model(torch.from_numpy(txt)[None], torch.ones(1, 9), torch.from_numpy(aud)[None], torch.ones(1, 120))
    assert [[m.start, m.end, m.score] for m in got] == postprocess(out, [120.0], max_ts=120.0)[0]

    long = rng.standard_normal((700, 768)).astype(np.float32)
    moments = p.predict(long, txt, top_k=8)
    assert len(moments) == 8
    assert [m.score for m in moments] == sorted((m.score for m in moments), reverse=True)
    assert all(0 <= m.start <= m.end <= 700 for m in moments)
    kept = [[m.start, m.end, m.score] for m in moments]
    assert merge(kept, 0.7) == kept  # no two kept moments overlap by IoU >= 0.7
    assert any(m.end > 300 for m in p.predict(long, txt, top_k=40))  # later windows contribute

    assert merge([[0, 10, 0.5], [1, 10, 0.9], [20, 30, 0.7], [0, 10, 0.6]], 0.7) == [[1, 10, 0.9], [20, 30, 0.7]]


@needs_msclap
def test_submit_from_extracted_features(clap, audio_dir, tmp_path) -> None:
    from amr.cli import main

    root = tmp_path / "eval"
    feat = root / "features" / "dcase2026_evaluation"
    weights = str(clap / "clap_weights.pth")
    _amr(
        ["extract-audio", "--audio-dir", str(audio_dir), "--out", str(feat), "--clap-weights", weights],
        clap,
        check=False,
    )
    rows = [
        {"qid": f"e{i}", "query": c, "vid": vid, "duration": GOOD[vid][0]}
        for i, (vid, c) in enumerate(zip(["a", "b", "long"], CAPTIONS.values(), strict=True))
    ]
    (root / "data").mkdir(parents=True)
    ann = root / "data" / "dcase2026_evaluation.jsonl"
    ann.write_text("".join(json.dumps(r) + "\n" for r in rows))
    _amr(["extract-text", "--annotations", str(ann), "--out", str(feat), "--clap-weights", weights], clap)
    out = tmp_path / "submission.jsonl"
    ckpt = _random_checkpoint(tmp_path / "m.ckpt")
    main(
        ["submit", "--ckpt", str(ckpt), "--data-root", str(root), "--out", str(out), "--cache-dir", str(tmp_path / "c")]
    )
    sub = [json.loads(x) for x in out.read_text().splitlines()]
    assert [s["qid"] for s in sub] == ["e0", "e1", "e2"]
    assert all(
        len(s["pred_relevant_windows"]) == 10 and all(len(w) == 2 for w in s["pred_relevant_windows"]) for s in sub
    )
