"""Re-synthesis speed and disk: `amr resynth official` (backgrounds read as slices of the long
recordings) against the same recipe done the public generator's way (every 60 s background clip at
a 1 s hop written as a WAV first, trimmed foregrounds written, then each clip read back and mixed).
Generated inputs: 60 Clotho-like clips, 3 "Walking Tours" recordings of 2 min at 16 kHz (2 in train:
122 recordings)."""

from __future__ import annotations

import csv
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from amr.resynth.design import Official
from amr.resynth.recipe import RecipeConfig, mix, window_starts
from amr.resynth.run import Output, plan, recording_of, resynth_split
from amr.resynth.sources import Clotho, read_captions, resample, split_videos
from benchmarks.common import table, update_report


def inputs(root: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    clotho, tours = root / "clotho", root / "tours"
    (clotho / "development").mkdir(parents=True)
    tours.mkdir()
    rows = [["file_name", *(f"caption_{k}" for k in range(1, 6))]]
    for i in range(60):
        sr, sec = 44_100, int(rng.integers(3, 11))
        x = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 3000) * np.arange(sec * sr) / sr)
        sf.write(clotho / "development" / f"c{i:02d}.wav", np.r_[np.zeros(sr), x, np.zeros(sr)], sr)
        rows.append([f"c{i:02d}.wav", *(f"sound {i} caption {k}" for k in range(1, 6))])
    with (clotho / "clotho_captions_development.csv").open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    for name in ("walk_a", "walk_b", "walk_c"):
        sf.write(tours / f"{name}.wav", rng.normal(0, 0.1, 120 * 16_000), 16_000)
    return clotho, tours


def disk(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def official_way(clotho: Path, tours: Path, out: Path, cfg: RecipeConfig) -> tuple[float, int]:
    """The same recordings, the clips written first; seconds and the peak bytes on disk."""
    t0 = time.perf_counter()
    videos = split_videos(sorted(tours.glob("*.wav")), cfg.split_ratio)["train"]
    clips = Clotho(clotho / "development", read_captions(clotho / "clotho_captions_development.csv"), cfg)
    clips.scan(print)
    (out / "fg").mkdir(parents=True)
    for clip, (on, off) in clips.bounds.items():  # trimmed foregrounds written
        x, sr = sf.read(clips.path(clip))
        sf.write(out / "fg" / f"{clip}.wav", x[on * sr : off * sr], sr)
    for v in videos:  # every background clip written
        x, sr = sf.read(v)
        (out / "bg" / v.stem).mkdir(parents=True, exist_ok=True)
        for s in window_starts(len(x), sr, cfg):
            sf.write(out / "bg" / v.stem / f"{s // sr}.wav", x[s : s + 60 * sr], sr)
    (out / "mix").mkdir()
    for job in plan(videos, "train", Official(cfg), 0):
        rec = recording_of(job, clips, 0, Official(cfg))
        bg, sr = sf.read(out / "bg" / job.video.stem / f"{job.start_sample // job.sr}.wav")
        fgs = []
        for ev in rec.events:
            y, fsr = sf.read(out / "fg" / f"{ev.clip}.wav")
            fgs.append((resample(y, fsr, cfg.sr), ev))
        mixture = mix(resample(bg, sr, cfg.sr), fgs, rec.bg_db, cfg.sr)
        sf.write(out / "mix" / f"{rec.vid}.wav", mixture, cfg.sr, subtype="PCM_16")
    return time.perf_counter() - t0, disk(out)


def main() -> dict:
    cfg = RecipeConfig()
    with tempfile.TemporaryDirectory() as tmp:
        clotho, tours = inputs(Path(tmp))
        t0 = time.perf_counter()
        ours = resynth_split(clotho, tours, Output(Path(tmp) / "ours", "train"), problem=print)
        t_ours, d_ours = time.perf_counter() - t0, disk(Path(tmp) / "ours")
        t_off, d_off = official_way(clotho, tours, Path(tmp) / "official", cfg)
        shutil.rmtree(Path(tmp) / "official")
    n = ours["recordings"]
    res = {
        "recordings": n,
        "ours_recordings_per_s": n / t_ours,
        "ours_mb": d_ours / 2**20,
        "official_way_recordings_per_s": n / t_off,
        "official_way_mb": d_off / 2**20,
        "speedup": t_off / t_ours,
        "disk_ratio": d_off / d_ours,
    }
    print(
        table(
            [
                ["amr resynth official (slices)", n, f"{n / t_ours:.1f}", f"{d_ours / 2**20:.0f} MB"],
                ["clips written first (public generator's way)", n, f"{n / t_off:.1f}", f"{d_off / 2**20:.0f} MB"],
            ],
            ["how", "recordings", "recordings/s", "disk written"],
        )
    )
    print(f"speed-up {res['speedup']:.1f}x, disk {res['disk_ratio']:.1f}x less")
    update_report("resynth", res)
    return res


if __name__ == "__main__":
    main()
