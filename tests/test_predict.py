"""``amr predict`` and :class:`amr.Predictor`: the CLI and the Python API agree, long recordings
are windowed and merged, bad input is one line before any model loads."""

from __future__ import annotations

import json

import numpy as np
import torch

from tests.helpers import needs_msclap, random_checkpoint, run_amr, run_python


@needs_msclap
def test_predict_cli_and_python_api_agree(clap, audio_dir, tmp_path) -> None:
    ckpt = random_checkpoint(tmp_path / "model.ckpt")
    weights = str(clap / "clap_weights.pth")
    wav = audio_dir / "long.wav"
    argv = ["predict", "--ckpt", str(ckpt), "--audio", str(wav), "--clap-weights", weights]
    proc = run_amr([*argv, "--query", "a dog barks", "--query", "rain", "--top-k", "3", "--json"], clap)
    docs = json.loads(proc.stdout)
    assert "decode=detr (the official decoding), no calibrator" in proc.stderr.splitlines()  # what formed them
    assert "MS-CLAP 2023 on " in proc.stderr  # the audio's way through MS-CLAP shows its progress
    assert [d["query"] for d in docs] == ["a dog barks", "rain"]
    for doc in docs:
        assert len(doc["moments"]) == 3
        scores = [m["score"] for m in doc["moments"]]
        assert scores == sorted(scores, reverse=True)
        assert all(0 <= m["start"] < m["end"] <= 7 for m in doc["moments"])  # 7 frames of 1 s, none empty
    # the Python API gives the same moments; the table form prints one row per moment
    script = (
        "import json, sys, amr, amr.cli; amr.cli.main(sys.argv[4:]); "
        "p = amr.Predictor(sys.argv[1], clap_weights=sys.argv[2]); "
        "print(json.dumps([m.to_json() for m in p.predict(sys.argv[3], 'a dog barks', top_k=3)]))"
    )
    out = run_python(["-c", script, str(ckpt), weights, str(wav), *argv, "--query", "a dog barks"], clap).stdout
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
        (["--query", "x", "--calibrator", str(wav)], f"error: {wav}: not a usable calibrator"),
    ]:
        proc = run_amr([*argv, *extra], clap, check=False)
        assert proc.returncode == 2 and proc.stderr.strip().startswith(expected), proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1


def test_long_recordings_are_windowed_and_merged(tmp_path) -> None:
    from amr.inference.predictor import Predictor, merge, window_starts
    from amr.model import postprocess

    assert window_starts(250, 300) == [0]
    assert window_starts(700, 300) == [0, 150, 300, 400]
    assert window_starts(301, 300) == [0, 1]
    p = Predictor(random_checkpoint(tmp_path / "m.ckpt"), device="cpu")
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


def test_a_zero_length_window_is_never_a_moment(tmp_path, monkeypatch) -> None:
    from amr.inference.predictor import Predictor

    p = Predictor(random_checkpoint(tmp_path / "model.ckpt"), device="cpu")
    rows = [[5.0, 5.0, 0.9], [2.0, 6.0, 0.8], [7.0, 7.0, 0.7], [1.0, 3.0, 0.6]]
    monkeypatch.setattr(Predictor, "_windows", lambda self, frames, txt: ([list(r) for r in rows], np.zeros(20)))
    frames = np.zeros((20, 768), dtype=np.float32)
    moments = p.predict(frames, np.zeros((4, 768), dtype=np.float32), top_k=3)
    assert [(m.start, m.end) for m in moments] == [(2.0, 6.0), (1.0, 3.0)]


def test_explain_gives_the_saliency_of_every_second(tmp_path) -> None:
    """``Predictor.explain``: ``predict``'s moments and a saliency per second; in a long recording,
    a second only the first window holds has that window's score (the recording's first 8 s alone)."""
    from amr.inference.predictor import Predictor

    p = Predictor(random_checkpoint(tmp_path / "model.ckpt"), device="cpu", max_frames=8)
    rng = np.random.default_rng(0)
    frames, txt = rng.standard_normal((20, 768)).astype(np.float32), rng.standard_normal((5, 768)).astype(np.float32)
    moments, saliency = p.explain(frames, txt, top_k=3)
    assert saliency.shape == (20,) and np.isfinite(saliency).all() and saliency.std() > 0
    assert moments == p.predict(frames, txt, top_k=3)
    alone = p.explain(frames[:8], txt)[1]
    np.testing.assert_allclose(saliency[:4], alone[:4], atol=1e-5)
