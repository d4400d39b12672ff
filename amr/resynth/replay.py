"""Replaying a released recipe (``recipe_{valid,test}.json`` of the public generator): each background
clip path ``.tmp/<split>/bg/<video>/<start>_<end>.wav`` is read as that slice of the long recording
``<video>``; each foreground path ``.tmp/<split>/fg/<clip>.wav`` is the Clotho clip, trimmed again
(its length must be the recipe's ``duration``); levels, starts, captions and qids are the recipe's."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from amr.errors import InputError
from amr.io import file_name
from amr.resynth.design import Official
from amr.resynth.recipe import Event, RecipeConfig, Recording
from amr.resynth.run import Job, Output, produce, reporter
from amr.resynth.sources import AUDIO_SUFFIXES, CLOTHO_SPLITS, Clotho, list_videos, readable

RECIPE_SPLITS = {"valid": "val", "val": "val", "test": "test", "train": "train"}


def _load(path: Path) -> list[dict[str, Any]]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"not a readable recipe ({e.__class__.__name__})", path) from None
    if not isinstance(doc, list) or not all(isinstance(r, dict) and {"name", "bg", "fg"} <= set(r) for r in doc):
        raise InputError('a recipe is a list of {"name", "bg", "fg"} entries', path)
    for i, entry in enumerate(doc):
        file_name(str(entry["name"]), f"entry {i}: name", path)
    return doc


def split_of(path: Path) -> str:
    """``recipe_valid.json`` -> ``val``."""
    key = path.stem.removeprefix("recipe_")
    if key not in RECIPE_SPLITS:
        raise InputError("cannot tell the split from the file name (recipe_{train,valid,test}.json)", path)
    return RECIPE_SPLITS[key]


def _events(entry: dict[str, Any]) -> tuple[Event, ...]:
    return tuple(
        Event(
            Path(f["path"]).stem,
            f["caption"],
            float(f["dB"]),
            float(f["start_time"]),
            float(f["duration"]),
            int(f["qid"]),
        )
        for f in entry["fg"]
    )


def replay(
    recipe: Path,
    clotho_dir: Path,
    walking_tours: Path,
    out: Output,
    cfg: RecipeConfig | None = None,
    problem: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Re-create the recordings of ``recipe`` under ``out.root``; a summary. A background that maps
    to no recording, or a clip missing, unreadable, silent or of another trimmed length than the
    recipe says, is one line and drops its recording."""
    import soundfile as sf

    cfg = cfg or RecipeConfig()
    problems, report = reporter(problem)
    entries = _load(recipe)
    videos: dict[str, Path | None] = {p.stem: p for p in list_videos(walking_tours, report)}
    recs = [(e, Recording(e["name"], "", 0.0, float(e["bg"]["dB"]), _events(e), cfg.window_s)) for e in entries]
    clips = {ev.clip: [ev.caption] for _, r in recs for ev in r.events}
    clotho = Clotho(clotho_dir / CLOTHO_SPLITS[out.split], clips, cfg)
    clotho.scan(report)
    jobs = []
    for entry, rec in recs:
        bg = Path(entry["bg"]["path"])
        if bg.parent.name not in videos:
            report(f"{recipe}: {entry['name']}: background {bg} maps to no recording in {walking_tours}")
            continue
        video = videos[bg.parent.name]
        if video is not None and video.suffix.lower() not in AUDIO_SUFFIXES:  # decoded once, if used
            video = videos[bg.parent.name] = readable(video, out.root / ".resynth" / "decoded", report)
        if video is None:
            continue
        bad = [ev for ev in rec.events if clotho.durations.get(ev.clip) != ev.duration]
        if bad:
            report(f"{recipe}: {entry['name']}: clip {bad[0].clip} is unusable or not {bad[0].duration} s once trimmed")
            continue
        sr = sf.info(video).samplerate
        start = float(bg.stem.split("_")[0])
        jobs.append(Job(out.split, 0, video, int(round(start * sr)), sr, int(round(cfg.window_s * sr)), 0, rec))
    made, _ = produce(out, jobs, clotho, 0, Official(cfg))
    return {
        "split": out.split,
        "recordings": len(made),
        "events": sum(len(r.events) for r in made),
        "problems": len(problems),
    }
