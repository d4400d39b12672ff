"""The Ask tab: a checkpoint, a recording (an audio file, or one of a data root's splits whose
features are extracted) and a query -> the ranked moments, the saliency over time, the ground
truth of a split's query, and the audio of each moment.

Everything a browser names is a key of a table built here from the command line (checkpoints,
recordings); audio is read only from the folder uploads land in. Files are written only to the
page's own temporary folder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from amr.checkpoints import Checkpoint
from amr.data.annotations import Query, load_annotations
from amr.data.features import AUDIO_KEY, TEXT_KEY, FeatureLayout, load_npz_array
from amr.errors import InputError
from amr.inference.predictor import Moment, Predictor
from amr.results.run_folder import RunFolder, finished_runs

Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class SplitQuery:
    """A query of a data root's split, with where its recording's and its own features are."""

    split: str
    query: Query
    features: FeatureLayout

    @property
    def label(self) -> str:
        return f"{self.split} · {self.query.vid} · {self.query.query} (qid {self.query.qid})"


@dataclass
class Answer:
    moments: list[Moment]
    saliency: np.ndarray  # (T,) per second of the recording
    decoding: str  # the decoder and calibrator that formed the moments
    features: str  # the encoder whose features the checkpoint read
    ground_truth: list[list[float]] = field(default_factory=list)  # a split's query only
    segments: list[Path] = field(default_factory=list)  # each moment's audio, when the audio is at hand


def checkpoints_of(ckpts: list[Path], runs: list[Path]) -> dict[str, Path]:
    """The checkpoints offered: those given, and each finished run's best one, by a short name."""
    out = {p.name if p.name not in {q.name for q in ckpts if q != p} else str(p): p for p in ckpts}
    for root in runs:
        for folder in [RunFolder(root)] if RunFolder(root).finished() else list(finished_runs(root)):
            if folder.best_ckpt.is_file():
                out[str(folder.path.relative_to(root.parent))] = folder.best_ckpt
    return out


def split_queries(root: Path) -> dict[str, SplitQuery]:
    """The queries of every split under ``root/data`` whose recordings have features in one of
    ``root/features/*`` (of any encoder: the checkpoint asked says which it reads), by label."""
    out: dict[str, SplitQuery] = {}
    for ann in sorted((root / "data").glob("*_release.jsonl")):
        split = ann.stem.removesuffix("_release")
        queries = load_annotations(ann, require_windows=False)
        folders = sorted((root / "features").glob("*"))
        folder = next((f for f in folders if queries and any(f.glob(f"*/{queries[0].vid}.npz"))), None)
        for q in queries if folder is not None else []:
            sq = SplitQuery(split, q, FeatureLayout(folder))  # type: ignore[arg-type]
            out[sq.label] = sq
    return out


class Asker:
    """One :class:`Predictor` per checkpoint (built on first use), answering the Ask tab."""

    def __init__(
        self, checkpoints: dict[str, Path], clap_weights: str | None, device: str | None, workdir: Path
    ) -> None:
        self.checkpoints = checkpoints
        self.clap_weights = clap_weights
        self.device = device
        self.workdir = workdir
        self.predictors: dict[str, Predictor] = {}

    def predictor(self, name: str) -> Predictor:
        if name not in self.checkpoints:
            raise InputError("not one of the checkpoints this page offers", name)
        if name not in self.predictors:
            ckpt = Checkpoint.read(self.checkpoints[name])
            self.predictors[name] = Predictor(ckpt, clap_weights=self.clap_weights, device=self.device)
        return self.predictors[name]

    def ask(
        self, name: str, query: str, top_k: int, audio: Path | None, picked: SplitQuery | None, progress: Progress
    ) -> Answer:
        """The moments of ``query`` in the uploaded ``audio`` or in ``picked``'s recording."""
        if not query.strip():
            raise InputError("the query is empty", "query")
        if audio is None and picked is None:
            raise InputError("give a recording: upload audio, record it, or pick one of a split", "recording")
        progress(0.05, "loading the checkpoint")
        pred = self.predictor(name)
        enc = pred.encoder
        if audio is not None:
            progress(0.2, f"{enc.name} on the audio")
            frames = pred.audio_features(audio)
        else:
            assert picked is not None
            layout = FeatureLayout(picked.features.folder, enc)
            if not layout.audio_file(picked.query.vid).is_file():
                raise InputError(f"the checkpoint reads {enc.name} features; this recording has none", layout.audio_dir)
            frames = load_npz_array(layout.audio_file(picked.query.vid), AUDIO_KEY, enc.audio_dim)
        progress(0.6, f"{enc.name} on the query")
        txt = self._text(pred, query, picked)
        progress(0.8, "the model")
        moments, saliency = pred.explain(frames, txt, top_k)
        gt = (picked.query.windows or []) if picked is not None and picked.query.query == query else []
        segments = self._segments(audio, moments) if audio is not None else []
        return Answer(moments, saliency, pred.decoding, enc.name, gt, segments)

    def _text(self, pred: Predictor, query: str, picked: SplitQuery | None) -> np.ndarray:
        """The query's features: the split's extracted ones when it is the split's own query."""
        if picked is not None and picked.query.query == query:
            layout = FeatureLayout(picked.features.folder, pred.encoder)
            path = layout.text_file(picked.query.qid)
            if path.is_file():
                return load_npz_array(path, TEXT_KEY, pred.encoder.text_dim)
        return pred.text_features(query)

    def _segments(self, audio: Path, moments: list[Moment]) -> list[Path]:
        """Each moment's stretch of the audio file, as a WAV in the page's own folder."""
        import soundfile as sf

        info = sf.info(str(audio))
        out = []
        for k, m in enumerate(moments):
            start, stop = int(m.start * info.samplerate), int(m.end * info.samplerate)
            data, sr = sf.read(str(audio), start=start, stop=max(stop, start + 1), always_2d=True)
            path = self.workdir / f"{audio.stem}_{k + 1}_{m.start:g}-{m.end:g}.wav"
            sf.write(str(path), data, sr)
            out.append(path)
        return out
