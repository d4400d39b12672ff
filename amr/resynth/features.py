"""MS-CLAP features straight from the mixtures, through the extractor ``amr extract-audio`` uses:
each mixture as its 16-bit WAV would read back, resampled to 44.1 kHz, cut into 1 s windows
(centred for Clotho-Moment: 61 frames for 60 s; CASTELLA's way otherwise: one frame per whole
second), embedded; no WAV on disk unless asked for."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from amr.data.features import AUDIO_KEY, Layout

if TYPE_CHECKING:
    from amr.clap.encoders import AudioTextEncoder


def as_written(audio: np.ndarray, sr: int) -> np.ndarray:
    """The mixture as its 16-bit WAV file reads back (float32)."""
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, audio, sr, format="WAV", subtype="PCM_16")
    buf.seek(0)
    return sf.read(buf, dtype="float32")[0]


class FeatureWriter:
    """Embeds mixtures and captions into ``root``'s layout of a dataset (``name``, ``feat_dir``:
    Clotho-Moment's by default; the encoder built on first use)."""

    def __init__(
        self,
        root: Path,
        encoder: Callable[[], AudioTextEncoder],
        batch_size: int = 64,
        name: str = "clotho_moment",
        feat_dir: str = "clotho-moment",
        centered: bool = True,
    ) -> None:
        self.layout = Layout(root, name, feat_dir)
        self.centered = centered
        self._make = encoder
        self._encoder: AudioTextEncoder | None = None
        self.batch_size = batch_size

    @property
    def encoder(self) -> AudioTextEncoder:
        if self._encoder is None:
            self._encoder = self._make()
        return self._encoder

    def audio(self, vid: str, mixture: np.ndarray, sr: int) -> None:
        import soxr

        from amr.clap.audio import SAMPLE_RATE, windows
        from amr.clap.extract import embed_windows, save_npz

        x = soxr.resample(mixture, sr, SAMPLE_RATE, quality="HQ").astype(np.float32, copy=False)
        emb = embed_windows(self.encoder, windows(x, centered=self.centered), self.batch_size)
        save_npz(self.layout.features.audio_file(vid), AUDIO_KEY, emb)

    def text(self, split: str) -> None:
        from amr.clap.extract import extract_text

        extract_text([self.layout.annotations(split)], None, self.layout.features.folder, lambda: self.encoder)
