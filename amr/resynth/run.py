"""A re-synthesis run: plan the recordings of a split, make each one (in parallel, deterministic per
recording whatever the number of workers), resume after a kill, write the official layout.

``ROOT/audio/<split>/<vid>.wav`` (16-bit, as the public generator writes them), one small record per
finished recording under ``ROOT/.resynth/<split>/`` (the resume marker, written after its audio),
and at the end ``ROOT/data/<name>_<split>_release.jsonl`` (``clotho_moment``, ``castella_like``: the
design's name). What the recordings look like is the design's (``design.py``); the run is the same.
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
from amr.resynth.design import Design, Official
from amr.resynth.features import FeatureWriter, as_written
from amr.resynth.recipe import RecipeConfig, Recording, mix, vid_name
from amr.resynth.sources import (
    CLOTHO_SPLITS,
    Clotho,
    list_videos,
    read_captions,
    read_slice,
    readable,
    resample,
    split_videos,
)

SPLIT_CODE = {"train": 0, "val": 1, "test": 2}


@dataclass(frozen=True)
class Job:
    split: str
    video_index: int
    video: Path
    start_sample: int  # at the video's own rate
    sr: int  # the video's rate
    length: int  # the background's samples at the video's rate
    index: int = 0  # the background's place among the video's
    recording: Recording | None = None  # a given recipe (replay); None: drawn from the seed


def plan(videos: Sequence[Path], split: str, design: Design, seed: int) -> list[Job]:
    """Every background of the split's videos, in order (a design that draws their lengths does so
    from the stream (seed, split, video))."""
    import soundfile as sf

    jobs = []
    for i, v in enumerate(videos):
        info = sf.info(v)
        rng = np.random.default_rng([seed, SPLIT_CODE[split], i])
        cuts = design.backgrounds(info.frames, info.samplerate, rng)
        jobs += [Job(split, i, v, s, info.samplerate, n, k) for k, (s, n) in enumerate(cuts)]
    return jobs


def recording_of(job: Job, clotho: Clotho, seed: int, design: Design) -> Recording:
    """The recipe of one recording: the job's own, or one drawn from its random stream (seed,
    split, video, background)."""
    if job.recording is not None:
        return job.recording
    rng = np.random.default_rng([seed, SPLIT_CODE[job.split], job.video_index, job.index])
    bg_db = float(rng.uniform(*design.cfg.bg_db_range))
    duration_s = job.length / job.sr
    events = design.draw(rng, clotho.durations, clotho.captions, duration_s)
    vid = vid_name(job.video.stem, job.start_sample, job.sr, duration_s)
    start_s = round(job.start_sample / job.sr, 1)
    return Recording(vid, job.video.stem, start_s, bg_db, tuple(events), duration_s)


def render(job: Job, rec: Recording, clotho: Clotho, cfg: RecipeConfig) -> np.ndarray:
    """The recording's mixture at ``cfg.sr``: its background slice read from the long file, each
    event the stretch of its trimmed clip from its offset."""
    x, sr = read_slice(job.video, job.start_sample, job.length)
    n = int(round(rec.duration_s * cfg.sr))
    bg = resample(x, sr, cfg.sr)[:n]
    bg = np.pad(bg, (0, n - len(bg)))
    fgs = []
    for e in rec.events:
        a = int(round(e.offset * cfg.sr))
        fgs.append((clotho.audio(e.clip)[a : a + int(round(e.duration * cfg.sr))], e))
    return mix(bg, fgs, rec.bg_db, cfg.sr)


_WORKER: dict[str, Any] = {}


def _init(clotho: Clotho, seed: int, design: Design, root: Path, keep_audio: bool, features: bool) -> None:
    _WORKER.update(clotho=clotho, seed=seed, design=design, root=root, keep_audio=keep_audio, features=features)


def _marker(root: Path, split: str, vid: str) -> Path:
    return root / ".resynth" / split / f"{vid}.json"


def make_one(job: Job) -> tuple[str, np.ndarray | None]:
    """Make one recording unless it is finished already: write its WAV (unless features alone are
    asked for) and, without features, its marker. Its vid, and the mixture when features are to be
    made from it (as its WAV would read back)."""
    import soundfile as sf

    clotho, seed, design, root = _WORKER["clotho"], _WORKER["seed"], _WORKER["design"], _WORKER["root"]
    cfg = design.cfg
    rec = recording_of(job, clotho, seed, design)
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


def labels(root: Path, split: str, recordings: Sequence[Recording], design: Design) -> int:
    """Write the split's annotation file; refused when a qid is taken by another split's file
    (their text features would share a file). The number of lines (queries)."""
    lines = design.lines(recordings, split)
    path = root / "data" / f"{design.name}_{split}_release.jsonl"
    qids = {ln["qid"] for ln in lines}
    for other in sorted(path.parent.glob(f"{design.name}_*_release.jsonl")) if path.parent.is_dir() else []:
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


def produce(out: Output, jobs: Sequence[Job], clotho: Clotho, seed: int, design: Design) -> tuple[list[Recording], int]:
    """Make every job's recording (skipping finished ones), then the labels (and text features);
    the recordings and the number of queries."""
    cfg = design.cfg
    args = (clotho, seed, design, out.root, out.features is None or out.keep_audio, out.features is not None)
    recordings = [recording_of(j, clotho, seed, design) for j in jobs]
    jobs = [replace(j, recording=r) for j, r in zip(jobs, recordings, strict=True)]  # drawn once, here
    by_vid = {r.vid: r for r in recordings}

    def done(vid: str, mixture: np.ndarray | None) -> None:
        if mixture is not None and out.features is not None:
            out.features.audio(vid, mixture, cfg.sr)
            write_json(_marker(out.root, out.split, vid), asdict(by_vid[vid]))

    _run_jobs(jobs, out.workers, args, done)
    queries = labels(out.root, out.split, recordings, design)
    if out.features is not None:
        out.features.text(out.split)
    return recordings, queries


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
    design: Design | None = None,
    problem: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """One split of a design (default: the official recipe) into ``out.root``; a summary. Problems
    with inputs (a missing, unreadable or silent clip, a video without audio) are one line each
    through ``problem`` (default: stderr) and counted; the run goes on."""
    design = design or Official()
    cfg = design.cfg
    problems, report = reporter(problem)
    captions = read_captions(clotho_dir / f"clotho_captions_{CLOTHO_SPLITS[out.split]}.csv")
    listed = split_videos(list_videos(walking_tours, report), cfg.split_ratio)[out.split]
    if not listed:
        raise InputError(f"no recordings fall in the {out.split} split (7:1:2 of the listing)", walking_tours)
    settings = {"seed": seed, "limit": limit, **design.settings(), "videos": [v.name for v in listed]}
    _settings(out.root, out.split, settings)
    videos = [p for v in listed if (p := readable(v, out.root / ".resynth" / "decoded", report)) is not None]
    jobs = plan(videos, out.split, design, seed)[:limit]
    clotho = Clotho(clotho_dir / CLOTHO_SPLITS[out.split], captions, cfg)
    clotho.scan(report)
    if not clotho.durations:
        raise InputError("no usable clip (every one missing, unreadable or silent)", clotho.folder)
    digest = hashlib.sha256(json.dumps(sorted(clotho.durations.items())).encode()).hexdigest()
    _settings(out.root, out.split, {"clips": digest})
    recordings, queries = produce(out, jobs, clotho, seed, design)
    return {
        "split": out.split,
        "recordings": len(recordings),
        "events": sum(len(r.events) for r in recordings),
        "queries": queries,
        "hours": sum(r.duration_s for r in recordings) / 3600,
        "clips": len(clotho.durations),
        "dropped_clips": len(captions) - len(clotho.durations),
        "problems": len(problems),
    }
