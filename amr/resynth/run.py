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
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from amr.errors import InputError
from amr.io import atomic_open, write_json, write_jsonl
from amr.resynth.features import FeatureWriter, as_written
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
    recording: Recording | None = None  # a given recipe (replay); None: drawn from the seed


def plan(videos: Sequence[Path], split: str, cfg: RecipeConfig) -> list[Job]:
    """Every background window of the split's videos, in order."""
    import soundfile as sf

    jobs = []
    for i, v in enumerate(videos):
        info = sf.info(v)
        jobs += [Job(split, i, v, s, info.samplerate) for s in window_starts(info.frames, info.samplerate, cfg)]
    return jobs


def recording_of(job: Job, clotho: Clotho, seed: int, cfg: RecipeConfig) -> Recording:
    """The recipe of one recording: the job's own, or one drawn from its random stream (seed,
    split, video, window)."""
    if job.recording is not None:
        return job.recording
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


def _init(clotho: Clotho, seed: int, cfg: RecipeConfig, root: Path, keep_audio: bool, features: bool) -> None:
    _WORKER.update(clotho=clotho, seed=seed, cfg=cfg, root=root, keep_audio=keep_audio, features=features)


def _marker(root: Path, split: str, vid: str) -> Path:
    return root / ".resynth" / split / f"{vid}.json"


def make_one(job: Job) -> tuple[str, np.ndarray | None]:
    """Make one recording unless it is finished already: write its WAV (unless features alone are
    asked for) and, without features, its marker. Its vid, and the mixture when features are to be
    made from it (as its WAV would read back)."""
    import soundfile as sf

    clotho, seed, cfg, root = _WORKER["clotho"], _WORKER["seed"], _WORKER["cfg"], _WORKER["root"]
    rec = recording_of(job, clotho, seed, cfg)
    marker = _marker(root, job.split, rec.vid)
    if marker.is_file():
        return rec.vid, None
    audio = render(job, rec, clotho, cfg)
    if _WORKER["keep_audio"]:
        with atomic_open(root / "audio" / job.split / f"{rec.vid}.wav", "wb") as f:
            sf.write(f, audio, cfg.sr, format="WAV", subtype="PCM_16")
    if _WORKER["features"]:
        return rec.vid, as_written(audio, cfg.sr)
    write_json(marker, asdict(rec))
    return rec.vid, None


def _run_jobs(jobs: Sequence[Job], workers: int, args: tuple, done: Callable[[str, np.ndarray | None], None]) -> None:
    """Every job through :func:`make_one` (in ``workers`` processes), ``done`` called in this one."""
    from tqdm import tqdm

    with tqdm(total=len(jobs), desc=f"resynth {jobs[0].split}" if jobs else "resynth", unit="recording") as bar:
        if workers <= 1:
            _init(*args)
            results: Any = map(make_one, jobs)
            for vid, audio in results:
                done(vid, audio)
                bar.update()
            return
        with multiprocessing.get_context("fork").Pool(workers, initializer=_init, initargs=args) as pool:
            for vid, audio in pool.imap_unordered(make_one, jobs, chunksize=4):
                done(vid, audio)
                bar.update()


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


SPLIT_FIRST_QID = {"train": 0, "val": 60_000, "test": 80_000}  # qids unique across a root's splits


def labels(root: Path, split: str, recordings: Sequence[Recording], cfg: RecipeConfig) -> int:
    """Write the split's annotation file (qids counted from the split's first one unless the recipe
    gives them); refused when a qid is taken by another split's file (their text features would
    share a file). The number of events."""
    lines: list[dict] = []
    for rec in recordings:
        lines += label_lines(rec, SPLIT_FIRST_QID[split] + len(lines), cfg)
    path = root / "data" / f"clotho_moment_{split}_release.jsonl"
    qids = {ln["qid"] for ln in lines}
    for other in sorted(path.parent.glob("clotho_moment_*_release.jsonl")) if path.parent.is_dir() else []:
        if other != path and (taken := qids & {json.loads(x)["qid"] for x in other.read_text().splitlines() if x}):
            raise InputError(
                f"{len(taken)} qids (first {min(taken)}) are taken by {other.name}; use another --out", path
            )
    write_jsonl(path, lines)
    return len(lines)


@dataclass
class Output:
    root: Path
    split: str
    workers: int = 1
    features: FeatureWriter | None = None
    keep_audio: bool = False


def produce(out: Output, jobs: Sequence[Job], clotho: Clotho, seed: int, cfg: RecipeConfig) -> int:
    """Make every job's recording (skipping finished ones), then the labels (and text features);
    the number of events."""
    args = (clotho, seed, cfg, out.root, out.features is None or out.keep_audio, out.features is not None)
    recordings = [recording_of(j, clotho, seed, cfg) for j in jobs]
    jobs = [replace(j, recording=r) for j, r in zip(jobs, recordings, strict=True)]  # drawn once, here
    by_vid = {r.vid: r for r in recordings}

    def done(vid: str, mixture: np.ndarray | None) -> None:
        if mixture is not None and out.features is not None:
            out.features.audio(vid, mixture, cfg.sr)
            write_json(_marker(out.root, out.split, vid), asdict(by_vid[vid]))

    _run_jobs(jobs, out.workers, args, done)
    events = labels(out.root, out.split, recordings, cfg)
    if out.features is not None:
        out.features.text(out.split)
    return events


def reporter(problem: Callable[[str], None] | None) -> tuple[list[str], Callable[[str], None]]:
    """A list of the problems reported, and the function reporting one (default: a warning line)."""
    problems: list[str] = []

    def report(line: str) -> None:
        problems.append(line)
        (problem or (lambda s: print(f"warning: {s}", file=sys.stderr)))(line)

    return problems, report


def resynth_split(
    clotho_dir: Path,
    walking_tours: Path,
    out: Output,
    seed: int = 0,
    limit: int | None = None,
    cfg: RecipeConfig | None = None,
    problem: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """One split of the official recipe into ``out.root``; a summary. Problems with inputs (a
    missing, unreadable or silent clip, a compressed video) are one line each through ``problem``
    (default: stderr) and counted; the run goes on."""
    cfg = cfg or RecipeConfig()
    problems, report = reporter(problem)
    captions = read_captions(clotho_dir / f"clotho_captions_{CLOTHO_SPLITS[out.split]}.csv")
    videos = split_videos(list_videos(walking_tours, report), cfg.split_ratio)[out.split]
    if not videos:
        raise InputError(f"no recordings fall in the {out.split} split (7:1:2 of the listing)", walking_tours)
    jobs = plan(videos, out.split, cfg)[:limit]
    settings = {"seed": seed, "limit": limit, "recipe": asdict(cfg), "videos": [v.name for v in videos]}
    _settings(out.root, out.split, settings)
    clotho = Clotho(clotho_dir / CLOTHO_SPLITS[out.split], captions, cfg)
    clotho.scan(report)
    if not clotho.durations:
        raise InputError("no usable clip (every one missing, unreadable or silent)", clotho.folder)
    digest = hashlib.sha256(json.dumps(sorted(clotho.durations.items())).encode()).hexdigest()
    _settings(out.root, out.split, {"clips": digest})
    events = produce(out, jobs, clotho, seed, cfg)
    return {
        "split": out.split,
        "recordings": len(jobs),
        "events": events,
        "hours": len(jobs) * cfg.window_s / 3600,
        "clips": len(clotho.durations),
        "dropped_clips": len(captions) - len(clotho.durations),
        "problems": len(problems),
    }
