"""The raw inputs of a re-synthesis: Clotho v2.1 clips with their captions, and the long Walking
Tours recordings read as slices (never cut into files)."""

from __future__ import annotations

import csv
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from amr.errors import InputError
from amr.resynth.recipe import RecipeConfig, trim_bounds

CLOTHO_SPLITS = {"train": "development", "val": "validation", "test": "evaluation"}
CAPTION_COLUMNS = ("file_name", "caption_1", "caption_2", "caption_3", "caption_4", "caption_5")
AUDIO_SUFFIXES = (".wav", ".flac")
VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm")


def read_captions(path: Path) -> dict[str, list[str]]:
    """Clotho's captions CSV -> file stem -> its five captions."""
    if not path.is_file():
        raise InputError("captions CSV not found", path)
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in CAPTION_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise InputError(f"captions CSV lacks the column(s) {', '.join(missing)}", path)
        out = {}
        for line, row in enumerate(reader, start=2):
            caps = [row[c].strip() for c in CAPTION_COLUMNS[1:] if (row[c] or "").strip()]
            if not row["file_name"] or not caps:
                raise InputError("a row without a file name or captions", path, line)
            out[Path(row["file_name"]).stem] = caps
    return out


def mono(x: np.ndarray) -> np.ndarray:
    return x.mean(axis=1) if x.ndim == 2 else x


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    if sr_in == sr_out:
        return np.asarray(x, dtype=np.float64)
    import soxr

    return soxr.resample(np.asarray(x, dtype=np.float64), sr_in, sr_out, quality="HQ")


@dataclass
class Clotho:
    """One split's clips: captions, trimmed durations (seconds) and, per clip, the trimmed audio at
    the mixtures' rate in a bounded cache."""

    folder: Path
    captions: dict[str, list[str]]
    cfg: RecipeConfig
    durations: dict[str, float] = field(default_factory=dict)
    bounds: dict[str, tuple[int, int]] = field(default_factory=dict)  # whole seconds kept
    cache_size: int = 256
    _cache: OrderedDict[str, np.ndarray] = field(default_factory=OrderedDict, repr=False)

    def path(self, clip: str) -> Path:
        return self.folder / f"{clip}.wav"

    def scan(self, problem: Callable[[str], None]) -> None:
        """Decode and trim every captioned clip once; a missing, unreadable or silent clip is
        reported through ``problem`` (one line naming the file) and dropped."""
        import soundfile as sf

        for clip in sorted(self.captions):
            path = self.path(clip)
            try:
                x, sr = sf.read(path, dtype="float64", always_2d=True)
            except (OSError, RuntimeError) as e:  # soundfile raises LibsndfileError (a RuntimeError)
                problem(f"{path}: {'missing' if not path.exists() else 'unreadable'} clip ({e.__class__.__name__})")
                continue
            x = mono(x)
            onset, offset = trim_bounds(x, sr, self.cfg.clip_db)
            if offset <= onset or not np.any(x[onset * sr : offset * sr]):
                problem(f"{path}: silent clip (nothing left after trimming)")
                continue
            self.bounds[clip] = (onset, offset)
            self.durations[clip] = float(offset - onset)

    def audio(self, clip: str) -> np.ndarray:
        """The trimmed clip at the mixtures' rate (cached, least recently used dropped first)."""
        if clip in self._cache:
            self._cache.move_to_end(clip)
            return self._cache[clip]
        import soundfile as sf

        onset, offset = self.bounds[clip]
        x, sr = sf.read(self.path(clip), dtype="float64", always_2d=True)
        y = resample(mono(x)[onset * sr : offset * sr], sr, self.cfg.sr)
        self._cache[clip] = y
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return y


def list_videos(folder: Path, problem: Callable[[str], None]) -> list[Path]:
    """The long background recordings (audio, or video whose audio :func:`readable` decodes), in
    name order; a second file of the same name (``walk.mp4`` beside ``walk.flac``) is reported and
    skipped, the audio one kept."""
    if not folder.is_dir():
        raise InputError("Walking Tours folder not found", folder)
    found = [p for p in sorted(folder.iterdir()) if p.suffix.lower() in AUDIO_SUFFIXES + VIDEO_SUFFIXES]
    by_stem: dict[str, Path] = {}
    for p in sorted(found, key=lambda p: (p.stem, p.suffix.lower() not in AUDIO_SUFFIXES, p.name)):
        if p.stem in by_stem:
            problem(f"{p}: another recording is named {p.stem} ({by_stem[p.stem].name}); skipped")
            continue
        by_stem[p.stem] = p
    if not by_stem:
        raise InputError(f"no {'/'.join(AUDIO_SUFFIXES + VIDEO_SUFFIXES)} recordings", folder)
    for p in by_stem.values():
        _audio_header(p)
    return [by_stem[k] for k in sorted(by_stem)]


def _audio_header(path: Path) -> None:
    """An audio file whose header soundfile cannot read is one line before any split is written
    (the split of every recording depends on the whole listing, so it cannot be skipped)."""
    if path.suffix.lower() not in AUDIO_SUFFIXES:
        return
    import soundfile as sf

    try:
        sf.info(str(path))
    except (RuntimeError, OSError) as e:
        reason = getattr(e, "error_string", None) or str(e) or type(e).__name__
        raise InputError(f"not audio soundfile can read ({reason}); convert or remove it", path) from None


def readable(path: Path, cache: Path, problem: Callable[[str], None]) -> Path | None:
    """A file soundfile can seek in for ``path``: itself for audio; for a video, its audio decoded
    once (PyAV) into ``cache/<stem>.flac``: mono, its own rate, 16-bit (channels averaged and
    quantised by FFmpeg's resampler, as ``ffmpeg -i V -ac 1 V.wav`` makes the public generator's
    WAVs). None, with one line, for a video without audio or one FFmpeg cannot decode."""
    if path.suffix.lower() in AUDIO_SUFFIXES:
        return path
    out = cache / f"{path.stem}.flac"
    if out.is_file():
        return out
    try:
        import av
    except ImportError:
        raise InputError("decoding video needs PyAV: pip install 'amr[video]'", path) from None
    import soundfile as sf

    from amr.io import atomic_open

    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                problem(f"{path}: no audio stream; skipped")
                return None
            stream = container.streams.audio[0]
            to_mono = av.AudioResampler(format="s16", layout="mono", rate=stream.rate)
            with atomic_open(out, "wb") as f, sf.SoundFile(f, "w", stream.rate, 1, "PCM_16", format="FLAC") as w:
                for frame in [*container.decode(stream), None]:
                    for chunk in to_mono.resample(frame):
                        w.write(chunk.to_ndarray().reshape(-1))
    except av.FFmpegError as e:
        problem(f"{path}: undecodable video ({e.__class__.__name__}); skipped")
        return None
    return out


def split_videos(videos: Sequence[Path], ratio: tuple[int, int, int]) -> dict[str, list[Path]]:
    """Videos split train : val : test by ``ratio`` in listing order (counts rounded as the public
    generator rounds them)."""
    total = sum(ratio)
    n_train = round(len(videos) * ratio[0] / total)
    n_val = round(len(videos) * ratio[1] / total)
    return {
        "train": list(videos[:n_train]),
        "val": list(videos[n_train : n_train + n_val]),
        "test": list(videos[n_train + n_val :]),
    }


def read_slice(path: Path, start: int, frames: int) -> tuple[np.ndarray, int]:
    """``frames`` samples from ``start`` of a long recording (mono), without reading the rest."""
    import soundfile as sf

    with sf.SoundFile(path) as f:
        f.seek(start)
        x = f.read(frames, dtype="float64", always_2d=True)
        return mono(x), f.samplerate
