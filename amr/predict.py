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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from amr.data.features import AUDIO_KEY, check_features, l2_normalize, load_npz_array
from amr.errors import InputError

if TYPE_CHECKING:
    from amr.clap.model import ClapEncoder
    from amr.lit_module import MomentRetrievalModule


@dataclass(frozen=True)
class Moment:
    start: float  # seconds
    end: float
    score: float  # foreground probability

    def to_json(self) -> dict[str, float]:
        return asdict(self)


def load_module(path: str | Path) -> MomentRetrievalModule:
    """A trained module from an amr checkpoint (``best.ckpt``/``last.ckpt`` or ``amr convert-official``).

    Raises:
        InputError: missing file, an official ``.pth`` not converted yet, or weights that do not fit
            the model config stored in the checkpoint.
    """
    from amr.lit_module import MomentRetrievalModule

    path = Path(path)
    if not path.is_file():
        raise InputError("checkpoint not found", path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise InputError(f"unreadable checkpoint ({type(e).__name__})", path) from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        model = ckpt.get("model") if isinstance(ckpt, dict) else None
        official = isinstance(model, dict) and "saliency_proj1.weight" in model
        hint = " (an official QD-DETR checkpoint: run `amr convert-official` first)" if official else ""
        raise InputError(f"not an amr checkpoint: no 'state_dict'/'hyper_parameters'{hint}", path)
    try:
        module = MomentRetrievalModule(**ckpt["hyper_parameters"])
    except (TypeError, ValueError) as e:
        raise InputError(f"checkpoint holds an unknown model config ({e})", path) from None
    own = module.state_dict()
    state = ckpt["state_dict"]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shape = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shape:
        parts = [
            f"{len(keys)} {name} (first: {keys[0]})"
            for name, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shape))
            if keys
        ]
        raise InputError("weights do not fit the checkpoint's model config: " + "; ".join(parts), path)
    module.load_state_dict(state)
    return module.eval()


def window_starts(n: int, size: int) -> list[int]:
    """Starts of windows of ``size`` frames covering ``n`` frames, overlapping by half; the last
    window ends at ``n``."""
    if n <= size:
        return [0]
    hop = max(1, size // 2)
    starts = list(range(0, n - size, hop))
    return [*starts, n - size]


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = max(a[1], b[1]) - min(a[0], b[0])
    return inter / union if union > 0 else float(a[0] == b[0] and a[1] == b[1])


def merge(rows: Sequence[Sequence[float]], iou: float = 0.7, top_k: int | None = None) -> list[list[float]]:
    """Candidates ``[st, ed, score]`` of several windows -> best first, dropping any that overlap an
    already kept one by ``iou`` or more (stable for equal scores)."""
    kept: list[list[float]] = []
    for r in sorted(rows, key=lambda r: -r[2]):
        if all(_iou(r, k) < iou for k in kept):
            kept.append(list(r))
            if top_k is not None and len(kept) == top_k:
                break
    return kept


class Predictor:
    """A trained checkpoint plus (lazily) MS-CLAP, answering text queries on recordings.

    Args:
        ckpt: amr checkpoint.
        clap_weights: local MS-CLAP 2023 weights; None downloads msclap's default.
        device: "cpu", "cuda", ...; default CUDA when present.
        centered: make audio features with 0.5 s padding (as Clotho-Moment's); CASTELLA's are not.
        max_frames: longest input the model sees at once (training's ``max_a_l``).
        nms_iou: overlap above which a window's candidate is dropped for a better one (long audio).
    """

    def __init__(
        self,
        ckpt: str | Path,
        clap_weights: str | Path | None = None,
        device: str | None = None,
        centered: bool = False,
        max_frames: int = 300,
        nms_iou: float = 0.7,
    ) -> None:
        from amr.clap.model import pick_device

        self.device = pick_device(device)
        self.module = load_module(ckpt).to(self.device)
        self.model = self.module.model
        self.clap_weights = clap_weights
        self.centered = centered
        self.max_frames = max_frames
        self.nms_iou = nms_iou
        self._clap: ClapEncoder | None = None

    @property
    def clap(self) -> ClapEncoder:
        if self._clap is None:
            from amr.clap.model import ClapEncoder

            self._clap = ClapEncoder(self.clap_weights, str(self.device))
        return self._clap

    def audio_features(self, audio: str | Path | np.ndarray | torch.Tensor) -> np.ndarray:
        """(T, 768) raw CLAP frames: from an audio file (whole recording), an ``.npz`` or an array."""
        if isinstance(audio, (str, Path)):
            path = Path(audio)
            if path.suffix == ".npz":
                return load_npz_array(path, AUDIO_KEY)
            from amr.clap.audio import audio_windows
            from amr.clap.extract import embed_windows

            if not path.is_file():
                raise InputError("audio file not found", path)
            win = audio_windows(path, None, self.centered)  # bad audio fails before CLAP loads
            return embed_windows(self.clap, win, 64)
        arr = audio.detach().cpu().numpy() if isinstance(audio, torch.Tensor) else np.asarray(audio)
        check_features(arr, "<audio features>")
        return arr

    def text_features(self, query: str | np.ndarray | torch.Tensor) -> np.ndarray:
        """(L, 768) GPT-2 token states of a query (text through MS-CLAP, or given as an array)."""
        if isinstance(query, str):
            if not query.strip():
                raise InputError("query is empty (only whitespace)", "<query>")
            return self.clap.text([query])[0]
        arr = query.detach().cpu().numpy() if isinstance(query, torch.Tensor) else np.asarray(query)
        check_features(arr, "<text features>")
        return arr

    @torch.inference_mode()
    def _windows(self, frames: np.ndarray, txt: np.ndarray) -> list[list[float]]:
        """Candidates of every window, in seconds of the whole recording (1 frame per second)."""
        from amr.data.dataset import time_features
        from amr.model import postprocess

        norm = l2_normalize(frames)
        n = len(norm)
        size = min(n, self.max_frames)
        starts = window_starts(n, size)
        tef = time_features(size)  # as the training items get them
        aud = np.stack([np.concatenate([norm[s : s + size], tef], 1) for s in starts])
        b = len(starts)
        inputs = {
            "src_aud": torch.from_numpy(aud).to(self.device),
            "src_aud_mask": torch.ones(b, size, device=self.device),
            "src_txt": torch.from_numpy(np.ascontiguousarray(txt, dtype=np.float32))
            .to(self.device)[None]
            .repeat(b, 1, 1),
            "src_txt_mask": torch.ones(b, len(txt), device=self.device),
        }
        ranked = postprocess(self.model(**inputs), [float(size)] * b, max_ts=float(size))
        return [[st + s, ed + s, sc] for s, rows in zip(starts, ranked, strict=True) for st, ed, sc in rows]

    def predict(
        self,
        audio_or_features: str | Path | np.ndarray | torch.Tensor,
        query: str | np.ndarray | torch.Tensor,
        top_k: int = 5,
    ) -> list[Moment]:
        """The ``top_k`` moments of ``query`` in the recording, best first. For several queries on
        one recording, pass ``self.audio_features(path)`` so that its audio goes through CLAP once.

        A recording of at most ``max_frames`` frames gets the official post-processing (integer
        seconds, ranked by confidence, no suppression), clamped to the recording instead of 300 s;
        a longer one is windowed and merged.
        """
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        frames = self.audio_features(audio_or_features)
        txt = self.text_features(query)
        rows = self._windows(frames, txt)
        if len(frames) > self.max_frames:
            rows = merge(rows, self.nms_iou, top_k)
        return [Moment(*r) for r in rows[:top_k]]
