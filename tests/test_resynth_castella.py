"""CASTELLA-like re-synthesis (distributions fit to annotation files, drawn recordings, labels, the
mixture as documented, settings a resumed run must keep) and Walking Tours given as .mp4 video."""

from __future__ import annotations

import io
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from amr.errors import InputError
from amr.resynth.castella import CONFIG, CastellaLike, Distributions, fit, load
from amr.resynth.recipe import trim_bounds
from tests.helpers import needs_msclap
from tests.test_resynth import SR_BG, _raw, _tree

SHARED_TRAIN = Path(__file__).resolve().parents[2] / "shared/data/annotations/castella_train_release.jsonl"
SMALL = ["--set", "duration_range_s=[10,30]", "--set", "p_longest=0.25"]  # short recordings: a fast test


def _cli(clotho: Path, tours: Path, out: Path, *extra: str, kind: str = "castella-like") -> list[str]:
    return ["-m", "amr.cli", "resynth", kind, "--clotho", str(clotho), "--walking-tours", str(tours), "--out", str(out),
            *extra]  # fmt: skip


def _run(args: list[str]) -> tuple[int, str, str]:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.skipif(not SHARED_TRAIN.is_file(), reason="CASTELLA's annotations are not beside the checkout")
def test_the_default_config_is_the_fit_to_castellas_train_annotations() -> None:
    fitted = fit([SHARED_TRAIN])
    dist = vars(load().dist)
    assert {k: list(dist[k]) if isinstance(dist[k], tuple) else dist[k] for k in fitted} == fitted


def test_fit_recovers_the_distributions_it_draws_from(tmp_path) -> None:
    """Draw many recordings from known distributions, write their labels, fit them back."""
    truth = Distributions((60, 200), 0.6, (0.2, 0.5, 0.3), (0.5, 0.3, 0.2), 1.2, 0.9, max_fill=1.0)
    design = CastellaLike(dist=truth)
    clips = {f"c{i}": 300.0 for i in range(40)}  # long clips: no window is cut to its clip
    captions = {k: [f"sound {k}"] for k in clips}
    rng = np.random.default_rng(5)
    recs = []
    from amr.resynth.recipe import Recording

    for i in range(3000):
        d = design.duration(rng)
        recs.append(Recording(f"v{i}_0.0_{d}.0", f"v{i}", 0.0, -20.0, tuple(design.draw(rng, clips, captions, d)), d))
    path = tmp_path / "ann.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in design.lines(recs, "train")))
    got = fit([path])
    assert got["duration_range_s"] == [60, 200] and abs(got["p_longest"] - 0.6) < 0.03
    np.testing.assert_allclose(got["queries"], truth.queries, atol=0.03)
    np.testing.assert_allclose(got["windows"], truth.windows, atol=0.03)
    assert abs(got["length_log_mean"] - 1.2) < 0.05 and abs(got["length_log_std"] - 0.9) < 0.05
    (tmp_path / "bad.jsonl").write_text('{"vid": "a", "duration": 60, "relevant_windows": [[1, 2]]}\n{"vid": "b"}\n')
    with pytest.raises(InputError, match=r"bad.jsonl:2: not an annotation line"):
        fit([tmp_path / "bad.jsonl"])


def test_hop_fill_and_window_folding_settings_are_read(tmp_path) -> None:
    dist = load().dist
    rng = np.random.default_rng(0)
    back_to_back = CastellaLike(replace(dist, duration_range_s=(10, 20), p_longest=0.0)).backgrounds(200 * 8, 8, rng)
    assert all(a[0] + a[1] == b[0] for a, b in zip(back_to_back, back_to_back[1:], strict=False))
    hopped = CastellaLike(replace(dist, duration_range_s=(10, 20), hop_s=3)).backgrounds(200 * 8, 8, rng)
    assert [s for s, _ in hopped[:4]] == [0, 24, 48, 72]  # one every 3 s at 8 Hz
    full = CastellaLike(replace(dist, max_fill=0.2))
    clips = {f"c{i}": 30.0 for i in range(20)}
    for seed in range(200):
        events = full.draw(np.random.default_rng(seed), clips, {k: ["x"] for k in clips}, 100.0)
        assert sum(e.duration for e in events) <= 20  # at most 20 % of 100 s
    path = tmp_path / "a.jsonl"
    windows = [[[i, i + 1 + i % 3] for i in range(0, 5 * n, 5)] for n in (1, 4, 7)]  # 1-3 s long
    rows = [{"vid": "v", "duration": 60, "relevant_windows": w} for w in windows]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert fit([path], max_windows=3)["windows"] == [0.333, 0.0, 0.667]  # 4 and 7 windows counted as 3
    rc, stdout, _ = _run(["-m", "amr.cli", "resynth", "fit-castella", str(path), "--max-windows", "3"])
    assert rc == 0 and "windows: [0.333, 0.0, 0.667]" in stdout
    assert "# window lengths: annotations median 1.5 s, 100.0 % <= 3 s; the fit: median 2 s" in stdout


def test_drawn_recordings_have_castellas_shape() -> None:
    design = load()
    clips = {f"c{i}": float(n) for i, n in enumerate(np.random.default_rng(0).integers(5, 30, 60))}
    captions = {k: [f"{k} a", f"{k} b"] for k in clips}
    lengths, per_query = [], []
    for seed in range(1500):
        rng = np.random.default_rng(seed)
        d = design.duration(rng)
        assert 60 <= d <= 300
        events = design.draw(rng, clips, captions, d)
        spans = sorted((e.start, e.start + e.duration) for e in events)
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False))  # never overlapping
        assert all(s >= 0 and e <= d and s == int(s) for s, e in spans)  # whole seconds inside the recording
        for e in events:
            assert e.offset >= 0 and e.offset + e.duration <= clips[e.clip]  # a stretch of its clip
        queries = {e.query: e.clip for e in events}
        assert len(set(queries.values())) == len(queries)  # one clip per query
        assert all(len({e.caption for e in events if e.query == q}) == 1 for q in queries)
        lengths += [e.duration for e in events]
        per_query += [sum(e.query == q for e in events) for q in queries]
    assert np.median(lengths) == 4 and 0.40 < np.mean(np.array(lengths) <= 3) < 0.50  # CASTELLA: 4 s, 47 %
    assert 2.4 < np.mean(per_query) < 2.9  # CASTELLA train: 2.8 windows per query (10 and more folded)


def test_castella_like_run_labels_mixture_and_settings(tmp_path) -> None:
    import soxr

    clotho, tours = _raw(tmp_path, {"a_walk": 70, "b_walk": 66})
    out = tmp_path / "cl"
    rc, stdout, stderr = _run(_cli(clotho, tours, out, "--split", "train", "--seed", "2", "--workers", "2", *SMALL))
    assert rc == 0, stderr
    assert "recordings" in stdout and "written under" in stdout and "castella_like_<split>_release.jsonl" in stdout
    rc, _, stderr = _run(_cli(clotho, tours, tmp_path / "one", "--split", "train", "--seed", "2", *SMALL))
    assert rc == 0 and _tree(out) == _tree(tmp_path / "one")  # whatever the number of workers

    ann = [json.loads(x) for x in (out / "data/castella_like_train_release.jsonl").read_text().splitlines()]
    vids = sorted({a["vid"] for a in ann})
    assert len(vids) >= 2 and all(v.startswith("a_walk_") for v in vids)
    for vid in vids:
        lines = [a for a in ann if a["vid"] == vid]
        assert [a["qid"] for a in lines] == [f"{vid}_{n}" for n in range(1, len(lines) + 1)]
        (duration,) = {a["duration"] for a in lines}
        assert 10 <= duration <= 30 and vid.endswith(f"_{float(duration + float(vid.split('_')[2]))}")
        spans = sorted(tuple(w) for a in lines for w in a["relevant_windows"])
        assert all(isinstance(s, int) and 0 <= s < e <= duration for s, e in spans)
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False))
        assert sf.info(out / "audio" / "train" / f"{vid}.wav").frames == duration * 32_000

    # a recording with an event cut from inside its clip, from its record, by the documented formula
    records = [json.loads((out / ".resynth/train" / f"{v}.json").read_text()) for v in vids]
    rec = next(r for r in records if any(e["offset"] > 0 for e in r["events"]))
    x, sr = sf.read(tours / "a_walk.wav", start=int(rec["start_s"] * SR_BG), frames=int(rec["duration_s"] * SR_BG))
    bg = soxr.resample(x, sr, 32_000, quality="HQ")
    mixed = bg * 10 ** (rec["bg_db"] / 20)
    for e in rec["events"]:
        y, ysr = sf.read(clotho / "development" / f"{e['clip']}.wav")
        on, off = trim_bounds(y, ysr)
        y = soxr.resample(y[on * ysr : off * ysr], ysr, 32_000, quality="HQ")
        y = y[int(e["offset"] * 32_000) : int((e["offset"] + e["duration"]) * 32_000)]
        a = int(e["start"] * 32_000)
        mixed[a : a + len(y)] += y / np.abs(y).max() * 10 ** (e["fg_db"] / 20) * np.sqrt(np.mean(bg**2))
    buf = io.BytesIO()
    sf.write(buf, mixed / np.abs(mixed).max(), 32_000, format="WAV", subtype="PCM_16")
    buf.seek(0)
    written, _ = sf.read(out / "audio" / "train" / f"{rec['vid']}.wav", dtype="int16")
    np.testing.assert_array_equal(written, sf.read(buf, dtype="int16")[0])

    # another distribution into the same folder: refused, one line, before any work
    rc, _, stderr = _run(_cli(clotho, tours, out, "--split", "train", "--seed", "2", *SMALL, "--set", "max_fill=0.5"))
    assert rc == 2 and "started with other settings (distributions)" in stderr and len(stderr.splitlines()) == 1


def test_castella_like_config_errors_are_one_line(tmp_path) -> None:
    clotho, tours = _raw(tmp_path, {"a_walk": 70})
    for setting, message in (
        ("window_s=30", "window_s is the official recipe's, not used here"),
        ("queries=[0,0]", "queries must be a non-empty list of probabilities"),
        ("p_longest=often", "p_longest: Value 'often' of type 'str' could not be converted to Float"),
        ("sr=0", "sr must be a positive sample rate, got 0"),
        ("split_ratio=[0,0,0]", "split_ratio must be counts >= 0, got [0, 0, 0]"),
    ):
        rc, _, stderr = _run(_cli(clotho, tours, tmp_path / "o", "--set", setting))
        assert rc == 2 and f"{CONFIG}: {message}" in stderr and len(stderr.strip().splitlines()) == 1, stderr
    partial = tmp_path / "partial.yaml"
    partial.write_text("p_longest: 0.5\n")  # a config of one's own must give every fit value
    rc, _, stderr = _run(_cli(clotho, tours, tmp_path / "o", "--config", str(partial)))
    assert rc == 2 and f"{partial}: duration_range_s: " in stderr and "missing mandatory value" in stderr
    assert not (tmp_path / "o").exists()
    rc, stdout, _ = _run(["-m", "amr.cli", "resynth", "fit-castella", str(tmp_path / "missing.jsonl")])
    assert rc == 2


def _mp4(path: Path, x: np.ndarray, sr: int) -> None:
    """Stereo float audio ``x`` (2, n) as AAC in an MP4 container."""
    import av

    with av.open(str(path), "w") as c:
        stream = c.add_stream("aac", rate=sr, layout="stereo", bit_rate=256_000)
        for i in range(0, x.shape[1], 1024):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(x[:, i : i + 1024]), format="fltp", layout="stereo")
            frame.rate = sr
            for packet in stream.encode(frame):
                c.mux(packet)
        for packet in stream.encode(None):
            c.mux(packet)


def test_walking_tours_as_mp4_are_decoded_once_and_read_like_audio(tmp_path) -> None:
    pytest.importorskip("av")
    clotho, wav_tours = _raw(tmp_path, {"a_walk": 64, "b_walk": 63})
    tours = tmp_path / "mp4_tours"
    tours.mkdir()
    rng = np.random.default_rng(1)
    sources = {}
    for name in ("a_walk", "b_walk"):
        sources[name] = (0.1 * rng.normal(size=(2, 64 * 22_050)) * [[1.0], [0.3]]).astype(np.float32)
        _mp4(tours / f"{name}.mp4", sources[name], 22_050)
    shutil.copy(wav_tours / "a_walk.wav", tours / "b_walk.wav")  # a second b_walk: the audio one is kept
    rc, stdout, stderr = _run(_cli(clotho, tours, tmp_path / "o", "--split", "train", "--limit", "2", kind="official"))
    assert rc == 0, stderr
    assert "b_walk.mp4: another recording is named b_walk (b_walk.wav); skipped" in stderr
    decoded = tmp_path / "o/.resynth/decoded/a_walk.flac"
    y, sr = sf.read(decoded)
    assert sr == 22_050 and sf.info(decoded).subtype == "PCM_16"
    ref = sources["a_walk"].mean(axis=0)  # the channels averaged
    lag = int(np.argmax(np.correlate(y[20_000:40_000], ref[20_000:24_000], "valid")))  # the encoder's delay
    z = y[lag : lag + len(ref)]
    assert np.corrcoef(z[5_000:-5_000], ref[5_000 : len(z) - 5_000])[0, 1] > 0.95  # lossy, but the same signal
    mtime = decoded.stat().st_mtime_ns
    # the same output as from the decoded audio given directly; the video is not decoded again
    flac = tmp_path / "flac_tours"
    flac.mkdir()
    shutil.copy(decoded, flac / "a_walk.flac")
    shutil.copy(wav_tours / "a_walk.wav", flac / "b_walk.wav")
    rc, _, stderr = _run(_cli(clotho, flac, tmp_path / "f", "--split", "train", "--limit", "2", kind="official"))
    assert rc == 0, stderr
    got = {k: v for k, v in _tree(tmp_path / "o").items() if not k.startswith(".resynth")}
    assert got == {k: v for k, v in _tree(tmp_path / "f").items() if not k.startswith(".resynth")} and got
    rc, _, _ = _run(_cli(clotho, tours, tmp_path / "o", "--split", "train", "--limit", "2", kind="official"))
    assert rc == 0 and decoded.stat().st_mtime_ns == mtime
    # a released recipe's background path maps onto the video as onto its audio
    recipe = tmp_path / "recipe_test.json"
    recipe.write_text(
        json.dumps(
            [{"name": "a_walk_2.0_62.0", "bg": {"path": ".tmp/test/bg/a_walk/2.0_62.0.wav", "dB": -20}, "fg": []}]
        )
    )
    for name, folder in (("rv", tours), ("rf", flac)):
        rc, _, stderr = _run(["-m", "amr.cli", "resynth", "replay", str(recipe), "--clotho", str(clotho),
                              "--walking-tours", str(folder), "--out", str(tmp_path / name)])  # fmt: skip
        assert rc == 0, stderr
    wav = "audio/test/a_walk_2.0_62.0.wav"
    assert (tmp_path / "rv" / wav).read_bytes() == (tmp_path / "rf" / wav).read_bytes()


@needs_msclap
def test_castella_like_features_pretrain_a_run(clap, tmp_path) -> None:
    """``--features`` writes CASTELLA's frames (one per whole second); the set pre-trains a run."""
    from tests.helpers import run_amr, run_python

    clotho, tours = _raw(tmp_path, {f"walk{i}": 40 for i in range(10)})
    root = tmp_path / "cl"
    args = _cli(
        clotho, tours, root, *SMALL, "--features", "--limit", "1", "--clap-weights", str(clap / "clap_weights.pth")
    )
    run_amr(args[2:], clap)
    for split in ("train", "val", "test"):
        ann = [json.loads(x) for x in (root / "data" / f"castella_like_{split}_release.jsonl").read_text().splitlines()]
        for a in ann:
            feats = np.load(root / "features/castella-like/clap" / f"{a['vid']}.npz")["features"]
            assert feats.shape == (a["duration"], 768)
            assert (root / "features/castella-like/clap_text" / f"qid{a['qid']}.npz").is_file()
    assert not (root / "audio").exists()
    cmd = ["-m", "amr.training.run", "experiment=baseline", "pretrain=castella_like", f"pretrain.data.root={root}"]
    cmd += ["data=synthetic_castella", "debug=fast", f"paths.root={tmp_path}", f"hydra.run.dir={tmp_path / 'run'}"]
    run_python(cmd, clap)
    assert "MR-full-R1@0.7" in json.loads((tmp_path / "run" / "test_metrics.json").read_text())["brief"]
