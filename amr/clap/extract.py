"""Folder-level feature extraction: resumable (existing files are skipped), atomic per file, batched,
and a bad input file never stops the others (failures are listed at the end).

Output: one feature folder (``FEATURES_DIR``, e.g. ``features/castella``) in the layout of
:class:`amr.data.features.FeatureLayout`, which the data layer reads.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from amr.clap.audio import AUDIO_SUFFIXES, SAMPLE_RATE, Channel, audio_windows
from amr.data.features import AUDIO_KEY, MSCLAP_2023, TEXT_KEY, Encoder, FeatureLayout
from amr.errors import InputError
from amr.io import atomic_open, file_name, read_jsonl
from amr.runtime import progress

if TYPE_CHECKING:
    from amr.clap.encoders import AudioTextEncoder

log = logging.getLogger(__name__)


@dataclass
class ExtractReport:
    written: list[Path] = field(default_factory=list)
    skipped: int = 0  # already present
    failures: list[str] = field(default_factory=list)  # one line per bad input

    def summary(self, what: str) -> str:
        return (
            f"{len(self.written)} {what} file(s) written, {self.skipped} already present, {len(self.failures)} failed"
        )


def save_npz(path: Path, key: str, arr: np.ndarray) -> None:
    """Atomic ``np.savez`` (float32), as the official extractors store features."""
    with atomic_open(path, "wb") as f:
        np.savez(f, **{key: np.asarray(arr, dtype=np.float32)})


def audio_files(audio_dir: Path) -> list[Path]:
    """Audio files of a folder (sorted), refusing two files that would write the same ``{vid}.npz``."""
    if not audio_dir.is_dir():
        raise InputError("audio folder not found", audio_dir)
    files = sorted(p for p in audio_dir.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise InputError(f"no audio files ({', '.join(AUDIO_SUFFIXES)})", audio_dir)
    seen: dict[str, Path] = {}
    for p in files:
        if p.stem in seen:
            raise InputError(f"two files give the same id '{p.stem}': {seen[p.stem].name} and {p.name}", audio_dir)
        seen[p.stem] = p
    return files


def embed_windows(encoder: AudioTextEncoder, win: np.ndarray, batch_size: int, desc: str | None = None) -> np.ndarray:
    """(T, rate) windows -> (T, audio width) embeddings, ``batch_size`` windows per forward pass; with a
    progress bar named ``desc`` when given."""
    starts = range(0, len(win), batch_size)
    if desc is not None:
        starts = progress(starts, desc, unit="batch")  # type: ignore[assignment]
    parts = [encoder.audio(win[i : i + batch_size]) for i in starts]
    return np.concatenate(parts, 0)


def _prefetch(
    paths: Sequence[Path], load: Callable[[Path], np.ndarray]
) -> Iterator[tuple[Path, np.ndarray | Exception]]:
    """Decode and resample the next file on a thread while the model works on the current one."""
    with ThreadPoolExecutor(max_workers=1) as pool:

        def safe(p: Path) -> np.ndarray | Exception:
            try:
                return load(p)
            except InputError as e:
                return e

        pending = deque(pool.submit(safe, p) for p in paths[:2])
        for i, p in enumerate(paths):
            result = pending.popleft().result()
            if i + 2 < len(paths):
                pending.append(pool.submit(safe, paths[i + 2]))
            yield p, result


def extract_audio_dir(
    audio_dir: Path,
    out_dir: Path,
    encoder_factory: Callable[[], AudioTextEncoder],
    max_seconds: float | None = 300.0,
    centered: bool = False,
    channel: Channel = "first",
    batch_size: int = 64,
    folders: Encoder = MSCLAP_2023,
    rate: int = SAMPLE_RATE,
) -> ExtractReport:
    """One ``{vid}.npz`` per audio file of ``audio_dir`` under ``out_dir/<folders.audio>`` (``clap``
    for MS-CLAP 2023), read at the encoder's ``rate``."""
    files = audio_files(audio_dir)
    feats = FeatureLayout(out_dir, folders)
    report = ExtractReport()
    todo = []
    for p in files:
        if feats.audio_file(p.stem).is_file():
            report.skipped += 1
        else:
            todo.append(p)
    if not todo:
        return report
    encoder = encoder_factory()

    def load(p: Path) -> np.ndarray:
        return audio_windows(p, max_seconds, centered, channel, rate)

    with tqdm(total=len(todo), desc="audio", unit="file") as bar:
        for p, win in _prefetch(todo, load):
            bar.update(1)
            if isinstance(win, Exception):
                report.failures.append(str(win))
                continue
            out = feats.audio_file(p.stem)
            save_npz(out, AUDIO_KEY, embed_windows(encoder, win, batch_size))
            report.written.append(out)
    return report


@dataclass
class TextJob:
    caption: str
    outputs: list[Path]


def _caption(value: object, path: Path, line: int, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{what} is empty or not a string", path, line)
    return value


def text_jobs(
    annotations: Sequence[Path], paraphrases: Path | None, out_dir: Path, folders: Encoder = MSCLAP_2023
) -> tuple[list[TextJob], int]:
    """Captions to encode and the files each one goes to (``folders``: the encoder's), skipping
    files already written; identical captions are encoded once. All input is checked before any
    model is loaded."""
    from amr.data.annotations import load_annotations

    feats = FeatureLayout(out_dir, folders)
    by_text: dict[str, list[Path]] = {}
    present = 0
    known: set[str] = set()

    def add(caption: str, dest: Path) -> None:
        nonlocal present
        if dest.is_file():
            present += 1
        else:
            by_text.setdefault(caption, []).append(dest)

    for ann in annotations:
        for q in load_annotations(ann, require_windows=False):
            if q.qid in known:
                continue
            known.add(q.qid)
            add(q.query, feats.text_file(q.qid))
    if paraphrases is not None:
        for line, row in read_jsonl(paraphrases):
            if "qid" not in row or not isinstance(row.get("versions"), list):
                raise InputError("each line needs 'qid' and a 'versions' list", paraphrases, line)
            qid = file_name(str(row["qid"]), "qid", paraphrases, line)
            if known and qid not in known:
                raise InputError(f"qid {qid} is not in the annotation file(s)", paraphrases, line)
            for v in row["versions"]:
                if not isinstance(v, dict) or not isinstance(v.get("pivot"), str) or not v["pivot"]:
                    raise InputError(f"qid {qid}: each version needs a 'pivot' and a 'text'", paraphrases, line)
                pivot = file_name(v["pivot"], f"qid {qid}: pivot", paraphrases, line)
                text = _caption(v.get("text"), paraphrases, line, f"qid {qid} version '{pivot}'")
                add(text, feats.text_file(qid, pivot))
    return [TextJob(c, d) for c, d in by_text.items()], present


def extract_text(
    annotations: Sequence[Path],
    paraphrases: Path | None,
    out_dir: Path,
    encoder_factory: Callable[[], AudioTextEncoder],
    batch_size: int = 64,
    folders: Encoder = MSCLAP_2023,
) -> ExtractReport:
    """Token-level features of every caption (and caption version) into ``out_dir`` (MS-CLAP's
    GPT-2 states in ``clap_text/`` by default; ``folders``: another encoder's)."""
    jobs, present = text_jobs(annotations, paraphrases, out_dir, folders)
    report = ExtractReport(skipped=present)
    if not jobs:
        return report
    encoder = encoder_factory()
    # similar lengths together: less padding, same values (see ClapEncoder.text)
    jobs.sort(key=lambda j: len(j.caption))
    with tqdm(total=len(jobs), desc="text", unit="caption") as bar:
        for i in range(0, len(jobs), batch_size):
            chunk = jobs[i : i + batch_size]
            for job, feats in zip(chunk, encoder.text([j.caption for j in chunk]), strict=True):
                for dest in job.outputs:
                    save_npz(dest, TEXT_KEY, feats)
                    report.written.append(dest)
            bar.update(len(chunk))
    return report
