"""Ask a trained model where in a recording a text query happens.

    >>> p = Predictor("outputs/.../checkpoints/best.ckpt")
    >>> p.predict("street.wav", "a dog barks while cars pass by", top_k=5)
    [Moment(start=12.0, end=20.0, score=0.8123), ...]

Audio goes through MS-CLAP 2023 exactly as ``amr extract-audio`` makes features (the ``clap``
extra); precomputed (T, 768) features, or an ``.npz`` file of them, skip CLAP. Recordings longer
than the model's maximum length (300 frames, as in training) are cut into windows overlapping by
half; each window is predicted on its own and the candidates of all windows are merged by score
with temporal non-maximum suppression, so a moment shorter than half a window lies whole in at
least one window.

A whole split (``amr submit``, ``amr decode``) goes through the network once, batch by batch
(:func:`collect`), as validation and test batch it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from amr.checkpoints import Checkpoint
from amr.data.annotations import Query
from amr.data.dataset import MomentDataset, SplitData, audio_input, collate, make_item
from amr.data.features import (
    AUDIO_KEY,
    MSCLAP_2023,
    Encoder,
    Layout,
    check_features,
    l2_normalize,
    load_npz_array,
)
from amr.errors import InputError
from amr.inference.batch import Candidates, network_outputs, predict_batch
from amr.inference.calibration import Calibrator, beside
from amr.inference.decoders import DecodeConfig
from amr.io import at_least_one
from amr.metrics.iou import pair_iou
from amr.runtime import progress

if TYPE_CHECKING:
    from amr.clap.encoders import AudioTextEncoder

EVALUATION_SET = "dcase2026_evaluation"  # the DCASE evaluation set's name in the official layout


@dataclass(frozen=True)
class Moment:
    start: float  # seconds
    end: float
    score: float  # the decoder's score (official: foreground probability; calibrated: P(IoU >= 0.7))

    def to_json(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class AudioWindows:
    """A recording decoded, checked and cut into 1 s windows, not yet through CLAP."""

    path: Path
    windows: np.ndarray  # (T, 44100)


def read_recording(
    path: str | Path, centered: bool = False, encoder: Encoder = MSCLAP_2023
) -> np.ndarray | AudioWindows:
    """An ``.npz`` of ``encoder``'s features -> its (T, audio_dim) frames; an audio file -> its
    windows (for an encoder amr runs on audio). Bad audio fails here, before any model is loaded."""
    path = Path(path)
    if not path.is_file():
        raise InputError("audio file not found", path)
    if path.suffix == ".npz":
        return load_npz_array(path, AUDIO_KEY, encoder.audio_dim)
    if not encoder.extracted:
        raise InputError(
            f"the checkpoint reads {encoder.name} features, which amr does not compute from audio: "
            f"give the recording's features as an .npz (key '{AUDIO_KEY}', (T, {encoder.audio_dim}))",
            path,
        )
    from amr.clap.audio import audio_windows
    from amr.clap.encoders import sample_rate

    return AudioWindows(path, audio_windows(path, None, centered, rate=sample_rate(encoder.name)))


MIN_WINDOW = 2
WINDOW_WHY = " (a window of one frame leaves every moment on the 1 s grid the same second)"


def window_starts(n: int, size: int) -> list[int]:
    """Starts of windows of ``size`` frames covering ``n`` frames, overlapping by half; the last
    window ends at ``n``."""
    if n <= size:
        return [0]
    hop = max(1, size // 2)
    starts = list(range(0, n - size, hop))
    return [*starts, n - size]


def check_query(query: str, where: str = "<query>") -> None:
    if not query.strip():
        raise InputError("query is empty (only whitespace)", where)


def merge(rows: Sequence[Sequence[float]], iou: float = 0.7, top_k: int | None = None) -> list[list[float]]:
    """Candidates ``[st, ed, score]`` of several windows -> best first, dropping any that overlap an
    already kept one by ``iou`` or more (stable for equal scores)."""
    kept: list[list[float]] = []
    for r in sorted(rows, key=lambda r: -r[2]):
        if all(pair_iou(r, k) < iou for k in kept):
            kept.append(list(r))
            if top_k is not None and len(kept) == top_k:
                break
    return kept


def decoding(
    ckpt: Checkpoint, decode: DecodeConfig | None = None, calibrator: str | Path | bool = True
) -> tuple[DecodeConfig, Calibrator | None, str]:
    """How a checkpoint's predictions are formed: ``decode`` (default: the calibrator's decoder when
    there is one, else the checkpoint's own, else the official one), the calibrator (``True``:
    ``calibrator.json`` beside the checkpoint when present; ``False``: none; a path: that file),
    and both said in one line."""
    path = beside(ckpt.path) if calibrator is True else (Path(calibrator) if calibrator else None)
    cal = Calibrator.load(path) if path is not None and (path.is_file() or calibrator is not True) else None
    if cal is not None:
        if decode is not None and decode != cal.decoder():
            raise InputError(
                f"the calibrator was fit on decode={cal.decoder().name} with other settings; "
                "leave --decode out or pass --no-calibrator",
                path,
            )
        return cal.decoder(), cal, f"decode={cal.decoder().name} (the calibrator's), {cal.method} calibrator {path}"
    if decode is not None:
        return decode, None, f"decode={decode.name} (given), no calibrator"
    if ckpt.decode:
        return DecodeConfig(**ckpt.decode), None, f"decode={ckpt.decode['name']} (the checkpoint's), no calibrator"
    return DecodeConfig(), None, "decode=detr (the official decoding), no calibrator"


@torch.inference_mode()
def collect(model: torch.nn.Module, dataset: MomentDataset, batch_size: int = 100, desc: str = "queries") -> Candidates:
    """The network's candidates for every query of a split (one pass, batches as evaluation's),
    with a progress bar named ``desc``."""
    out = Candidates()
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate)
    for batch in progress(loader, desc, unit="batch"):
        out.extend(network_outputs(model, batch)[1])
    return out


def evaluation_lines(
    ckpt_path: str | Path,
    data_root: Path,
    feat_dir: str,
    annotations: Path | None,
    cache_dir: Path,
    decode: DecodeConfig | None = None,
    calibrator: str | Path | bool = True,
) -> tuple[list[dict[str, Any]], str]:
    """The DCASE evaluation set's prediction lines (``amr submit``) from the distributed features
    under ``data_root`` (annotations: default ``data/dcase2026_evaluation.jsonl`` there), and the
    decoder and calibrator that formed them, in one line. The checkpoint is checked before the
    features are read."""
    ckpt = Checkpoint.read(ckpt_path)
    model = ckpt.model(ckpt.encoder)
    decode, cal, how = decoding(ckpt, decode, calibrator)
    layout = Layout(Path(data_root), EVALUATION_SET, feat_dir, ckpt.encoder)  # the features it was trained on
    ann = Path(annotations) if annotations else Path(data_root) / "data" / f"{EVALUATION_SET}.jsonl"
    data = SplitData.load(layout, "evaluation", cache_dir, require_windows=False, annotations=ann)
    cands = collect(model, MomentDataset(data, train=False, with_labels=False))
    return cands.lines(decode, cal), how


class Predictor:
    """A trained checkpoint plus (lazily) MS-CLAP, answering text queries on recordings.

    Args:
        ckpt: amr checkpoint (a path, or one already read).
        clap_weights: local MS-CLAP 2023 weights; None downloads msclap's default.
        device: "cpu", "cuda", ...; default CUDA when present.
        centered: make audio features with 0.5 s padding (as Clotho-Moment's); CASTELLA's are not.
        max_frames: longest input the model sees at once (training's ``max_a_l``).
        nms_iou: overlap above which a window's candidate is dropped for a better one (long audio).
        decode, calibrator: see :func:`decoding`; every window of a long recording is decoded alike.
    """

    def __init__(
        self,
        ckpt: str | Path | Checkpoint,
        clap_weights: str | Path | None = None,
        device: str | None = None,
        centered: bool = False,
        max_frames: int = 300,
        nms_iou: float = 0.7,
        decode: DecodeConfig | None = None,
        calibrator: str | Path | bool = True,
    ) -> None:
        from amr.clap.model import pick_device

        at_least_one(max_frames, "max_frames", MIN_WINDOW, WINDOW_WHY)
        self.device = pick_device(device)
        checkpoint = ckpt if isinstance(ckpt, Checkpoint) else Checkpoint.read(ckpt)
        self.encoder = checkpoint.encoder  # the features it reads: its own encoder's
        self.model = checkpoint.model(self.encoder).to(self.device)
        self.decode, self.calibrator, self.decoding = decoding(checkpoint, decode, calibrator)
        self.clap_weights = clap_weights
        self.centered = centered
        self.max_frames = max_frames
        self.nms_iou = nms_iou
        self._clap: AudioTextEncoder | None = None

    @property
    def clap(self) -> AudioTextEncoder:
        """The checkpoint's encoder (MS-CLAP 2023 or LAION-CLAP) with ``clap_weights``, built on first use;
        weights whose audio width is not the checkpoint's are one line."""
        if self._clap is None:
            from amr.clap.encoders import build_encoder

            enc = build_encoder(self.encoder.name, self.clap_weights, str(self.device))
            if enc.audio_dim != self.encoder.audio_dim:
                raise InputError(
                    f"{enc.audio_dim}-d {self.encoder.name} audio features; the checkpoint reads "
                    f"{self.encoder.audio_dim}-d ones",
                    enc.report.path,
                )
            self._clap = enc
        return self._clap

    def audio_features(self, audio: str | Path | AudioWindows | np.ndarray | torch.Tensor) -> np.ndarray:
        """(T, audio width) raw frames of the checkpoint's encoder: from an audio file (whole
        recording), an ``.npz``, the result of :func:`read_recording`, or an array."""
        if isinstance(audio, (str, Path)):
            audio = read_recording(audio, self.centered, self.encoder)
        if isinstance(audio, AudioWindows):
            from amr.clap.extract import embed_windows

            return embed_windows(
                self.clap, audio.windows, 64, f"{self.clap.report.what} on {len(audio.windows)} s of {audio.path.name}"
            )
        arr = audio.detach().cpu().numpy() if isinstance(audio, torch.Tensor) else np.asarray(audio)
        check_features(arr, "<audio features>", self.encoder.audio_dim)
        return arr

    def text_features(self, query: str | np.ndarray | torch.Tensor) -> np.ndarray:
        """(L, text width) token states of a query (text through the checkpoint's encoder, or given
        as an array)."""
        if isinstance(query, str):
            check_query(query)
            if not self.encoder.extracted:
                raise InputError(
                    f"the checkpoint reads {self.encoder.name} features, which amr does not compute from text: "
                    f"give the query's token features ({self.encoder.text_dim}-d)",
                    "<query>",
                )
            return self.clap.text([query])[0]
        arr = query.detach().cpu().numpy() if isinstance(query, torch.Tensor) else np.asarray(query)
        check_features(arr, "<text features>", self.encoder.text_dim)
        return arr

    @torch.inference_mode()
    def _windows(self, frames: np.ndarray, txt: np.ndarray) -> tuple[list[list[float]], np.ndarray]:
        """Candidates of every window, in seconds of the whole recording (1 frame per second), and
        the saliency of every frame (the mean over the windows holding it)."""
        norm = l2_normalize(frames)
        size = min(len(norm), self.max_frames)
        starts = window_starts(len(norm), size)
        txt = np.ascontiguousarray(txt, dtype=np.float32)
        items = [
            make_item(
                i,
                Query(qid=str(s), query="", vid="", duration=float(size), windows=None),
                txt,
                audio_input(norm[s : s + size]),
            )
            for i, s in enumerate(starts)
        ]
        batch = collate(items)
        pred = predict_batch(self.model, batch, float(size), self.decode, self.calibrator)
        rows = [
            [st + s, ed + s, sc]
            for s, line in zip(starts, pred.lines, strict=True)
            for st, ed, sc in line["pred_relevant_windows"]
        ]
        curves = pred.outputs["saliency_scores"].float().cpu().numpy()[:, :size]
        total, count = np.zeros(len(norm)), np.zeros(len(norm))
        for s, curve in zip(starts, curves, strict=True):
            total[s : s + size] += curve
            count[s : s + size] += 1
        return rows, total / np.maximum(count, 1)

    def predict(
        self,
        audio_or_features: str | Path | AudioWindows | np.ndarray | torch.Tensor,
        query: str | np.ndarray | torch.Tensor,
        top_k: int = 5,
    ) -> list[Moment]:
        """The ``top_k`` moments of ``query`` in the recording, best first. For several queries on
        one recording, pass ``self.audio_features(path)`` so that its audio goes through CLAP once.

        A recording of at most ``max_frames`` frames gets the post-processing of the decoder (the
        official one by default: integer seconds, ranked by confidence, no suppression), clamped to
        the recording instead of 300 s; a longer one is windowed, each window decoded, and merged.
        """
        return self.explain(audio_or_features, query, top_k)[0]

    def explain(
        self,
        audio_or_features: str | Path | AudioWindows | np.ndarray | torch.Tensor,
        query: str | np.ndarray | torch.Tensor,
        top_k: int = 5,
    ) -> tuple[list[Moment], np.ndarray]:
        """:meth:`predict`'s moments and the saliency of every second of the recording (T,): the
        network's per-frame score against the query, averaged where windows of a long one overlap."""
        at_least_one(top_k, "top_k")
        frames = self.audio_features(audio_or_features)
        txt = self.text_features(query)
        rows, saliency = self._windows(frames, txt)
        rows = [r for r in rows if r[1] > r[0]]  # a zero-length window is no moment
        if len(frames) > self.max_frames:
            rows = merge(rows, self.nms_iou, top_k)
        return [Moment(*r) for r in rows[:top_k]], saliency
