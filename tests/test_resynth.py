"""Re-synthesis of Clotho-Moment from generated raw audio: the trimming rule, event placement, levels,
labels, determinism across worker counts, resume after a kill, one-line input problems."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from scipy import stats

from amr.errors import InputError
from amr.resynth.recipe import Event, RecipeConfig, Recording, label_lines, mix, place_events, trim_bounds
from tests.helpers import needs_msclap

SR_CLIP = 8000  # generated "Clotho" clips
SR_BG = 11025  # generated "Walking Tours" recordings (resampled to 32 kHz like any other)


def test_trim_keeps_the_whole_seconds_between_the_first_and_last_loud_one() -> None:
    sr = 100
    levels = [0.01, 0.02, 1.0, 0.05, 1.0, 0.01]  # amplitude per second; loud: seconds 2 and 4
    x = np.concatenate([np.full(sr, a) for a in levels] + [np.full(50, 1.0)])  # + a partial second
    assert trim_bounds(x, sr, clip_db=5.0) == (2, 5)
    quiet_mid = np.concatenate([np.full(sr, a) for a in [1.0, 0.0, 1.0]])
    assert trim_bounds(quiet_mid, sr) == (0, 3)  # a quiet second inside a clip stays
    assert trim_bounds(np.ones(3 * sr), sr) == (0, 3)  # nothing above the mean: the whole seconds
    assert trim_bounds(np.ones(sr - 1), sr) == (0, 0)  # under a second: nothing


def test_events_are_sorted_inside_the_window_with_exponential_gaps() -> None:
    cfg = RecipeConfig(window_s=60.0)
    durations = {f"c{i}": float(1 + i % 7) for i in range(50)}
    captions = {k: [f"{k} a", f"{k} b"] for k in durations}
    rng = np.random.default_rng(0)
    for _ in range(300):
        events = place_events(rng, durations, captions, cfg)
        assert [e.start for e in events] == sorted(e.start for e in events)
        assert all(e.start > 0 and e.start + e.duration <= 60.0 for e in events)
        assert all(e.caption in captions[e.clip] and -5 <= e.fg_db <= 5 for e in events)
        assert len({e.clip for e in events}) == len(events)  # a clip at most once per window
    # on a window long enough never to stop the draw, the gaps are Exp(mean 30 s)
    long = RecipeConfig(window_s=1e9)
    durations_1s = {f"c{i}": 1.0 for i in range(4000)}
    events = place_events(np.random.default_rng(1), durations_1s, {k: ["x"] for k in durations_1s}, long)
    gaps = np.diff([0.0] + [e.start for e in events]) - np.r_[0.0, np.ones(len(events) - 1)]
    assert len(events) == 4000 and abs(gaps.mean() - 30.0) < 1.5
    assert stats.kstest(gaps, "expon", args=(0, 30.0)).pvalue > 0.01


def test_levels_in_the_mixture_follow_the_db_values(tmp_path) -> None:
    sr = 32_000
    rng = np.random.default_rng(0)
    bg = rng.normal(0, 0.3, 60 * sr)
    tone = np.sin(2 * np.pi * 440 * np.arange(3 * sr) / sr) * np.hanning(3 * sr) * 0.2
    ev = Event("c", "a tone", fg_db=3.7, start=20.25, duration=3.0)
    out = mix(bg, [(tone, ev)], bg_db=-21.3, sr=sr)
    assert np.isclose(np.abs(out).max(), 1.0)
    sf.write(tmp_path / "m.wav", out, sr, subtype="PCM_16")
    m, _ = sf.read(tmp_path / "m.wav")
    bg_att = bg * 10 ** (-21.3 / 20)
    quiet = np.r_[0 : 20 * sr, 24 * sr : 60 * sr]
    scale = m[quiet] @ bg_att[quiet] / (bg_att[quiet] @ bg_att[quiet])  # the peak normalisation
    bg_rms = np.sqrt(np.mean((scale * bg_att) ** 2))
    fg = m / scale - bg_att
    a = int(20.25 * sr)
    fg_peak = np.abs(fg[a : a + 3 * sr]).max() * scale
    assert abs(20 * np.log10(bg_rms / (np.sqrt(np.mean(bg**2)) * scale)) - (-21.3)) < 0.1
    assert abs(20 * np.log10(fg_peak / bg_rms) - (3.7 - -21.3)) < 0.1


def test_labels_round_as_the_public_generator() -> None:
    rec = Recording(
        "walk_12.0_72.0",
        "walk",
        12.0,
        -20.0,
        (Event("a", "x", 0.0, 3.25, 2.0), Event("b", "y", 0.0, 40.96, 7.0)),
    )
    lines = label_lines(rec, 41)
    assert [ln["qid"] for ln in lines] == ["00041", "00042"]
    assert [ln["relevant_windows"] for ln in lines] == [[[3.2, 5.2]], [[41.0, 48.0]]]
    assert lines[0]["vid"] == "walk_12.0_72.0" and lines[0]["duration"] == 60 and lines[0]["fg_dB"] == 0.0


def test_qids_stay_unique_across_a_roots_splits(tmp_path) -> None:
    from amr.resynth.design import Official
    from amr.resynth.run import labels

    rec = Recording("v_0.0_60.0", "v", 0.0, -20.0, (Event("a", "x", 1.5, 1.0, 2.0),))
    assert labels(tmp_path, "val", [rec], Official()) == 1  # val counts from 60000
    assert json.loads((tmp_path / "data/clotho_moment_val_release.jsonl").read_text())["qid"] == "60000"
    given = Recording("w_0.0_60.0", "w", 0.0, -20.0, (Event("a", "x", 1.5, 1.0, 2.0, qid=60000),))
    with pytest.raises(InputError, match=r"1 qids \(first 60000\) are taken by clotho_moment_val_release.jsonl"):
        labels(tmp_path, "test", [given], Official())


def _clip(rng: np.random.Generator, seconds: int) -> np.ndarray:
    lead, tail = int(rng.integers(0, 3)), int(rng.integers(0, 3))
    t = np.arange(seconds * SR_CLIP) / SR_CLIP
    body = 0.5 * np.sin(2 * np.pi * rng.uniform(200, 2000) * t)
    quiet = rng.normal(0, 1e-3, (lead + tail) * SR_CLIP)
    return np.r_[quiet[: lead * SR_CLIP], body, quiet[lead * SR_CLIP :], np.zeros(SR_CLIP // 3)]


def _raw(tmp_path: Path, videos: dict[str, int]) -> tuple[Path, Path]:
    """Generated Clotho (clips with quiet lead/tail, one silent, one missing, one unreadable) and
    long "Walking Tours" noise recordings (name -> seconds)."""
    rng = np.random.default_rng(0)
    clotho = tmp_path / "clotho"
    for split, n in (("development", 24), ("validation", 6), ("evaluation", 12)):
        (clotho / split).mkdir(parents=True)
        rows = []
        for i in range(n):
            name = f"{split[:3]}_{i:02d}.wav"
            rows.append([name, *(f"sound {i} number {k}" for k in range(1, 6))])
            sf.write(clotho / split / name, _clip(rng, int(rng.integers(1, 6))), SR_CLIP)
        sf.write(clotho / split / rows[0][0], np.zeros(3 * SR_CLIP), SR_CLIP)  # silent
        (clotho / split / rows[1][0]).write_text("not audio")  # unreadable
        rows.append(["gone.wav", *(f"gone {k}" for k in range(1, 6))])  # missing
        with (clotho / f"clotho_captions_{split}.csv").open("w", newline="") as f:
            csv.writer(f).writerows([["file_name", *(f"caption_{k}" for k in range(1, 6))], *rows])
    tours = tmp_path / "tours"
    tours.mkdir()
    for name, seconds in videos.items():
        sf.write(tours / f"{name}.wav", rng.normal(0, 0.1, seconds * SR_BG), SR_BG)
    return clotho, tours


@pytest.fixture
def raw(tmp_path) -> tuple[Path, Path]:
    return _raw(tmp_path, {"a_walk": 70, "b_walk": 66})


def _resynth(clotho: Path, tours: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "amr.cli", "resynth", "official", "--clotho", str(clotho)]
    cmd += ["--walking-tours", str(tours), "--out", str(out), *extra]
    return subprocess.run(cmd, capture_output=True, text=True)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_resynthesis_is_deterministic_resumable_and_reports_bad_clips(raw, tmp_path) -> None:
    from amr.resynth.run import Output, resynth_split

    clotho, tours = raw
    lines: list[str] = []
    one = resynth_split(clotho, tours, Output(tmp_path / "one", "train"), seed=3, problem=lines.append)
    assert one["recordings"] == 11 and one["dropped_clips"] == 3 and one["problems"] == 3  # 70 s: 11 windows
    assert sorted(ln.split(": ")[1].split(" ")[0] for ln in lines) == ["missing", "silent", "unreadable"]
    assert all(ln.startswith(str(clotho)) for ln in lines)
    two = _resynth(clotho, tours, tmp_path / "two", "--split", "train", "--seed", "3", "--workers", "2")
    assert two.returncode == 0, two.stderr
    assert _tree(tmp_path / "one") == _tree(tmp_path / "two")  # whatever the number of workers

    ann = [json.loads(x) for x in (tmp_path / "one/data/clotho_moment_train_release.jsonl").read_text().splitlines()]
    assert [a["qid"] for a in ann] == [f"{i:05d}" for i in range(len(ann))] and len(ann) == one["events"]
    for a in ann:
        ((st, ed),) = a["relevant_windows"]
        assert 0 < st < ed <= 60 and a["vid"].startswith("a_walk_") and a["duration"] == 60
        audio, sr = sf.read(tmp_path / "one" / "audio" / "train" / f"{a['vid']}.wav")
        assert sr == 32_000 and len(audio) == 60 * sr and np.isclose(np.abs(audio).max(), 1.0, atol=1e-4)

    # killed mid-way, then run again: the same files as an uninterrupted run
    env = dict(os.environ)
    cmd = [sys.executable, "-m", "amr.cli", "resynth", "official", "--clotho", str(clotho)]
    cmd += ["--walking-tours", str(tours), "--out", str(tmp_path / "killed"), "--split", "train", "--seed", "3"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    markers = tmp_path / "killed" / ".resynth" / "train"
    deadline = time.time() + 120
    while len(list(markers.glob("*_walk_*.json"))) < 3 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "data").exists()  # stopped before the end
    assert _resynth(clotho, tours, tmp_path / "killed", "--split", "train", "--seed", "3").returncode == 0
    assert _tree(tmp_path / "killed") == _tree(tmp_path / "one")

    # another seed into the same folder: refused, one line, nothing touched
    other = _resynth(clotho, tours, tmp_path / "one", "--split", "train", "--seed", "4")
    assert other.returncode == 2 and "started with other settings (seed)" in other.stderr
    assert len(other.stderr.strip().splitlines()) == 1


def test_bad_inputs_are_one_line_before_any_work(raw, tmp_path) -> None:
    from amr.resynth.sources import read_captions

    clotho, tours = raw
    bad = tmp_path / "bad.csv"
    bad.write_text("file_name,caption_1\nx.wav,a dog\n")
    with pytest.raises(InputError, match=r"bad.csv: captions CSV lacks the column\(s\) caption_2"):
        read_captions(bad)
    proc = _resynth(clotho, tmp_path / "nowhere", tmp_path / "o")
    assert proc.returncode == 2 and "Walking Tours folder not found" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "o").exists()
    proc = _resynth(clotho, tours, tmp_path / "o", "--keep-audio")
    assert proc.returncode == 2 and "error: --keep-audio: only read with --features" in proc.stderr
    proc = _resynth(clotho, tours, tmp_path / "o", "--split", "val")  # 2 recordings: none in val
    assert proc.returncode == 2 and "no recordings fall in the val split" in proc.stderr
    proc = _resynth(clotho, tours, tmp_path / "o", "--limit", "2")  # every split: val skipped, said once
    assert proc.returncode == 0 and "val: no recording falls in this split (7:1:2 of 2); skipped" in proc.stdout
    assert sorted(p.name for p in (tmp_path / "o" / "data").iterdir()) == [
        "clotho_moment_test_release.jsonl",
        "clotho_moment_train_release.jsonl",
    ]
    (tours / "c_walk.wav").write_text("not audio")  # listed last: its split is written after the others
    proc = _resynth(clotho, tours, tmp_path / "o2", "--limit", "2")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "c_walk.wav: not audio soundfile can read (Format not recognised" in proc.stderr
    assert not (tmp_path / "o2").exists()


@needs_msclap
def test_features_straight_from_the_mixtures_train(clap, tmp_path) -> None:
    from tests.helpers import run_amr, run_python

    clotho, tours = _raw(tmp_path, {f"walk{i}": 60 for i in range(10)})  # 7 : 1 : 2 videos, one window each
    root = tmp_path / "resynth"
    args = ["resynth", "official", "--clotho", str(clotho), "--walking-tours", str(tours), "--out", str(root)]
    weights = ["--clap-weights", str(clap / "clap_weights.pth")]
    run_amr([*args, "--features", "--keep-audio", "--limit", "1", "--seed", "1", *weights], clap)
    feats = sorted((root / "features" / "clotho-moment" / "clap").glob("*.npz"))
    assert len(feats) == 3 and all(np.load(f)["features"].shape == (61, 768) for f in feats)
    # the same features as the extractor makes from the written WAVs (Clotho-Moment's centred frames)
    out = tmp_path / "extracted"
    run_amr(
        ["extract-audio", "--audio-dir", str(root / "audio" / "test"), "--out", str(out), "--centered", *weights], clap
    )
    (test_vid,) = [p.stem for p in (root / "audio" / "test").glob("*.wav")]
    np.testing.assert_allclose(
        np.load(out / "clap" / f"{test_vid}.npz")["features"],
        np.load(root / "features/clotho-moment/clap" / f"{test_vid}.npz")["features"],
        rtol=0,
        atol=1e-5,
    )
    for split in ("train", "val", "test"):
        ann = (root / "data" / f"clotho_moment_{split}_release.jsonl").read_text().splitlines()
        qids = [json.loads(x)["qid"] for x in ann]
        assert qids and all((root / "features/clotho-moment/clap_text" / f"qid{q}.npz").is_file() for q in qids)
    cmd = [
        "-m",
        "amr.training.run",
        "experiment=castella_only",
        "data=clotho_moment",
        f"data.root={root}",
        "debug=fast",
    ]
    run_python([*cmd, f"paths.root={tmp_path}", f"hydra.run.dir={tmp_path / 'run'}"], clap)
    metrics = json.loads((tmp_path / "run" / "test_metrics.json").read_text())
    assert "MR-full-R1@0.7" in metrics["brief"]


def test_replay_of_a_public_format_recipe_is_the_documented_mixture(raw, tmp_path) -> None:
    import io

    import soxr

    from amr.resynth.replay import replay
    from amr.resynth.run import Output

    clotho, tours = raw
    clips = sorted((clotho / "evaluation").glob("eva_*.wav"))[2:5]  # readable, not silent

    def trimmed(path: Path) -> np.ndarray:
        y, sr = sf.read(path)
        on, off = trim_bounds(y, sr)
        return soxr.resample(y[on * sr : off * sr], sr, 32_000, quality="HQ")

    fg = [
        {"qid": 7 + i, "path": f".tmp/test/fg/{c.stem}.wav", "caption": f"cap {i}", "dB": 2.5 - 3 * i,
         "duration": len(trimmed(c)) / 32_000, "start_time": 4.37 + 17 * i}
        for i, c in enumerate(clips)
    ]  # fmt: skip
    recipe = [
        {"name": "a_walk_3.0_63.0", "bg": {"path": ".tmp/test/bg/a_walk/3.0_63.0.wav", "dB": -18.2}, "fg": fg},
        {"name": "zz_9.0_69.0", "bg": {"path": ".tmp/test/bg/zz/9.0_69.0.wav", "dB": -20.0}, "fg": fg[:1]},
        {"name": "b_walk_1.0_61.0", "bg": {"path": ".tmp/test/bg/b_walk/1.0_61.0.wav", "dB": -20.0},
         "fg": [dict(fg[0], duration=fg[0]["duration"] + 1)]},
    ]  # fmt: skip
    path = tmp_path / "recipe_test.json"
    path.write_text(json.dumps(recipe))
    lines: list[str] = []
    got = replay(path, clotho, tours, Output(tmp_path / "replayed", "test"), problem=lines.append)
    assert got["recordings"] == 1 and got["problems"] == 2
    assert "zz_9.0_69.0: background .tmp/test/bg/zz/9.0_69.0.wav maps to no recording" in lines[0]
    assert "b_walk_1.0_61.0: clip eva_02 is unusable or not" in lines[1]

    # the documented formula, step by step
    x, sr = sf.read(tours / "a_walk.wav", start=3 * SR_BG, frames=60 * SR_BG)
    bg = soxr.resample(x, sr, 32_000, quality="HQ")
    mixed = bg * 10 ** (-18.2 / 20)
    for f, c in zip(fg, clips, strict=True):
        y = trimmed(c)
        a = int(f["start_time"] * 32_000)
        mixed[a : a + len(y)] += y / np.abs(y).max() * 10 ** (f["dB"] / 20) * np.sqrt(np.mean(bg**2))
    buf = io.BytesIO()
    sf.write(buf, mixed / np.abs(mixed).max(), 32_000, format="WAV", subtype="PCM_16")
    buf.seek(0)
    written, _ = sf.read(tmp_path / "replayed" / "audio" / "test" / "a_walk_3.0_63.0.wav", dtype="int16")
    np.testing.assert_array_equal(written, sf.read(buf, dtype="int16")[0])
    ann = [
        json.loads(x) for x in (tmp_path / "replayed/data/clotho_moment_test_release.jsonl").read_text().splitlines()
    ]
    assert [a["qid"] for a in ann] == ["00007", "00008", "00009"]
    assert ann[0]["relevant_windows"] == [[4.4, float(f"{4.37 + fg[0]['duration']:.1f}")]]
