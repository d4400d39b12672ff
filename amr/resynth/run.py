"""A re-synthesis run: plan the recordings of a split, make each one (in parallel, deterministic per
recording whatever the number of workers), resume after a kill, write the official layout.

``ROOT/audio/<split>/<vid>.wav`` (16-bit, as the public generator writes them), one small record per
finished recording under ``ROOT/.resynth/<split>/`` (the resume marker, written after its audio),
and at the end ``ROOT/data/clotho_moment_<split>_release.jsonl`` with qids counted in recording order.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from amr.errors import InputError
from amr.io import atomic_open, write_json, write_jsonl
from amr.resynth.recipe import (
    RecipeConfig,
    Recording,
    label_lines,
    mix,
    place_events,
    vid_name,
    window_starts,
)
from amr.resynth.sources import CLOTHO_SPLITS, Clotho, list_videos, read_captions, read_slice, resample, split_videos

SPLIT_CODE = {"train": 0, "val": 1, "test": 2}


@dataclass(frozen=True)
class Job:
    split: str
    video_index: int
    video: Path
    start_sample: int  # at the video's own rate
    sr: int  # the video's rate


def plan(videos: Sequence[Path], split: str, cfg: RecipeConfig) -> list[Job]:
    """Every background window of the split's videos, in order."""
    import soundfile as sf

    jobs = []
    for i, v in enumerate(videos):
        info = sf.info(v)
        jobs += [Job(split, i, v, s, info.samplerate) for s in window_starts(info.frames, info.samplerate, cfg)]
    return jobs


def recording_of(job: Job, clotho: Clotho, seed: int, cfg: RecipeConfig) -> Recording:
    """The recipe of one recording, from its own random stream (seed, split, video, window)."""
    hop = int(round(cfg.hop_s * job.sr))
    rng = np.random.default_rng([seed, SPLIT_CODE[job.split], job.video_index, job.start_sample // hop])
    bg_db = float(rng.uniform(*cfg.bg_db_range))
    events = place_events(rng, clotho.durations, clotho.captions, cfg)
    vid = vid_name(job.video.stem, job.start_sample, job.sr, cfg)
    return Recording(vid, job.video.stem, round(job.start_sample / job.sr, 1), bg_db, tuple(events))


def render(job: Job, rec: Recording, clotho: Clotho, cfg: RecipeConfig) -> np.ndarray:
    """The recording's mixture at ``cfg.sr``: its background slice read from the long file."""
    x, sr = read_slice(job.video, job.start_sample, int(round(cfg.window_s * job.sr)))
    n = int(round(cfg.window_s * cfg.sr))
    bg = resample(x, sr, cfg.sr)[:n]
    bg = np.pad(bg, (0, n - len(bg)))
    return mix(bg, [(clotho.audio(e.clip), e) for e in rec.events], rec.bg_db, cfg.sr)


_WORKER: dict[str, Any] = {}


def _init(clotho: Clotho, seed: int, cfg: RecipeConfig, root: Path) -> None:
    _WORKER.update(clotho=clotho, seed=seed, cfg=cfg, root=root)


def _marker(root: Path, split: str, vid: str) -> Path:
    return root / ".resynth" / split / f"{vid}.json"


def make_one(job: Job) -> int:
    """Make one recording unless it is finished already; the number of its events."""
    import soundfile as sf

    clotho, seed, cfg, root = _WORKER["clotho"], _WORKER["seed"], _WORKER["cfg"], _WORKER["root"]
    rec = recording_of(job, clotho, seed, cfg)
    marker = _marker(root, job.split, rec.vid)
    if marker.is_file():
        return len(rec.events)
    audio = render(job, rec, clotho, cfg)
    with atomic_open(root / "audio" / job.split / f"{rec.vid}.wav", "wb") as f:
        sf.write(f, audio, cfg.sr, format="WAV", subtype="PCM_16")
    write_json(marker, asdict(rec))
    return len(rec.events)


def _settings(root: Path, split: str, doc: dict[str, Any]) -> None:
    """Record how ``root``'s split is made; a resumed run must be the same run (the keys of ``doc``
    are compared with those recorded, then added)."""
    path = root / ".resynth" / split / "settings.json"
    doc = json.loads(json.dumps(doc))  # as it reads back (tuples are lists)
    old = json.loads(path.read_text()) if path.is_file() else {}
    changed = sorted(k for k in doc if k in old and old[k] != doc[k])
    if changed:
        raise InputError(f"this split was started with other settings ({', '.join(changed)}); use another --out", path)
    if any(k not in old for k in doc):
        write_json(path, old | doc)


def labels(root: Path, split: str, jobs: Sequence[Job], clotho: Clotho, seed: int, cfg: RecipeConfig) -> int:
    """Write the split's annotation file from the finished recordings; the number of events."""
    lines: list[dict] = []
    for job in jobs:
        rec = recording_of(job, clotho, seed, cfg)
        lines += label_lines(rec, len(lines), cfg)
    write_jsonl(root / "data" / f"clotho_moment_{split}_release.jsonl", lines)
    return len(lines)


def resynth_split(
    clotho_dir: Path,
    walking_tours: Path,
    root: Path,
    split: str,
    seed: int = 0,
    workers: int = 1,
    limit: int | None = None,
    cfg: RecipeConfig | None = None,
    problem: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """One split of the official recipe into ``root``; a summary. Problems with inputs (a missing,
    unreadable or silent clip, a compressed video) are one line each through ``problem`` (default:
    stderr) and counted; the run goes on."""
    from tqdm import tqdm

    cfg = cfg or RecipeConfig()
    problems: list[str] = []

    def report(line: str) -> None:
        problems.append(line)
        (problem or (lambda s: print(f"warning: {s}", file=sys.stderr)))(line)

    captions = read_captions(clotho_dir / f"clotho_captions_{CLOTHO_SPLITS[split]}.csv")
    videos = split_videos(list_videos(walking_tours, report), cfg.split_ratio)[split]
    if not videos:
        raise InputError(f"no recordings fall in the {split} split (7:1:2 of the listing)", walking_tours)
    jobs = plan(videos, split, cfg)[:limit]
    _settings(root, split, {"seed": seed, "limit": limit, "recipe": asdict(cfg), "videos": [v.name for v in videos]})
    clotho = Clotho(clotho_dir / CLOTHO_SPLITS[split], captions, cfg)
    clotho.scan(report)
    if not clotho.durations:
        raise InputError("no usable clip (every one missing, unreadable or silent)", clotho.folder)
    _settings(root, split, {"clips": hashlib.sha256(json.dumps(sorted(clotho.durations.items())).encode()).hexdigest()})
    args = (clotho, seed, cfg, root)
    bar = tqdm(total=len(jobs), desc=f"resynth {split}", unit="recording")
    if workers <= 1:
        _init(*args)
        for job in jobs:
            make_one(job)
            bar.update()
    else:
        with multiprocessing.get_context("fork").Pool(workers, initializer=_init, initargs=args) as pool:
            for _ in pool.imap_unordered(make_one, jobs, chunksize=4):
                bar.update()
    bar.close()
    events = labels(root, split, jobs, clotho, seed, cfg)
    return {
        "split": split,
        "recordings": len(jobs),
        "events": events,
        "hours": len(jobs) * cfg.window_s / 3600,
        "clips": len(clotho.durations),
        "dropped_clips": len(captions) - len(clotho.durations),
        "problems": len(problems),
    }
