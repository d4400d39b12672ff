"""MS-CLAP feature extraction through the real msclap code paths, on a random-weight MS-CLAP 2023
(real HTSAT, 1-layer GPT-2, locally trained tokenizer) served offline."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from amr.clap.audio import SAMPLE_RATE, n_frames, windows
from amr.testing.tiny_clap import COMMIT
from tests.helpers import CAPTIONS, GOOD, needs_msclap, run_amr, run_python

sf = pytest.importorskip("soundfile")


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
        "import sys, amr, amr.cli, amr.inference.predictor, amr.clap.extract, amr.training.run; "
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
    proc = run_amr(args, clap, check=False)
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
    proc = run_amr(args, clap, check=False)
    assert "0 audio feature file(s) written, 4 already present, 5 failed" in proc.stdout
    assert {p: p.stat().st_mtime_ns for p in (out / "clap").iterdir()} == stamps

    centered = tmp_path / "centered"
    args = ["extract-audio", "--audio-dir", str(audio_dir), "--out", str(centered), "--centered"]
    proc = run_amr([*args, "--max-seconds", "0", "--clap-weights", str(clap / "clap_weights.pth")], clap, check=False)
    for name, (sec, _, _) in {**GOOD, "short": (0.6, 0, 0)}.items():
        assert np.load(centered / "clap" / f"{name}.npz")["features"].shape == (int(sec) + 1, 768)


@needs_msclap
def test_features_equal_msclap_wrapper_path(clap, audio_dir, tmp_path) -> None:
    """Our extractor against the official recipe written on msclap's own CLAPWrapper."""
    out = tmp_path / "feat"
    run_amr(
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
    run_amr(
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
    res = json.loads(run_python(["-c", script, *map(str, args)], clap).stdout.strip().splitlines()[-1])
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
    proc = run_amr(argv, clap)
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
    data = SplitData.load(layout, "train", tmp_path / "cache", pivots=["de"])
    assert data.alias == {"de/q3": "q3"}
    de = np.load(feat / "clap_text_versions" / "de" / "qidq1.npz")["last_hidden_state"]
    np.testing.assert_allclose(np.asarray(data.text["de/q1"]), de, rtol=0, atol=1e-6)
    ds = MomentDataset(data, train=True, pivots=["de"])
    assert {ds[i]["pivot"] for i in range(len(ds))} <= {None, "de"}

    # a rerun writes nothing; a whitespace-only version text is a one-line error before any work
    proc = run_amr(argv, clap)
    assert "0 text feature file(s) written, 5 already present" in proc.stdout
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps(versions[0]) + "\n" + json.dumps({**versions[1], "versions": [{"pivot": "fr", "text": "  "}]}) + "\n"
    )
    proc = run_amr(
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
    proc = run_amr(args, env_root, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: microsoft/msclap: cannot get CLAP_weights_2023.pth (LocalEntryNotFoundError); pass --clap-weights PATH"
    ]
    proc = run_amr([*args, "--clap-weights", str(clap / "clap_weights.pth")], env_root, check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("error: gpt2: cannot load the text encoder")
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "f" / "clap").exists() or not any((tmp_path / "f" / "clap").iterdir())
