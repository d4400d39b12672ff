"""LAION-CLAP through the ``laion_clap`` package: strict weight loading, the audio encoder's
embedding before the projection for each 1 s window, and RoBERTa's hidden states per token.

Supported checkpoints are the package's non-fusion ones; the architecture is read from the weights:

=====================================================  ==========  ===========  =========
checkpoint                                             audio       audio width  text
=====================================================  ==========  ===========  =========
``630k-best.pt``, ``630k-audioset-best.pt``            HTSAT-tiny  768          RoBERTa 768
``music_audioset_epoch_15_esc_90.14.pt``,              HTSAT-base  1024         RoBERTa 768
``music_speech_audioset_epoch_15_esc_89.98.pt``,
``music_speech_epoch_15_esc_89.25.pt``
=====================================================  ==========  ===========  =========

Fusion checkpoints (``630k-fusion-best.pt``, ...) are refused: their audio input is a 10 s crop
plus a resized whole, which has no per-second meaning.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from amr.checkpoints import load_strict, read
from amr.clap.model import LoadReport, pick_device, weights_file
from amr.errors import InputError

SAMPLE_RATE = 48_000  # LAION-CLAP's input rate
CLIP = 480_000  # the package's 10 s input: a 1 s window is repeated ten times to fill it ("repeatpad")
TEXT_LEN = 77
HUB_REPO = "lukewys/laion_clap"
HUB_FILE = "630k-audioset-best.pt"
AMODELS = {96: "HTSAT-tiny", 128: "HTSAT-base"}  # width of the patch embedding -> audio architecture
_PATCH = "audio_branch.patch_embed.proj.weight"
_STALE_KEYS = re.compile(r"(^|\.)position_ids$")  # a buffer older transformers saved with RoBERTa


def new_laion(amodel: str = "HTSAT-tiny") -> Any:
    """The package's non-fusion CLAP model with a RoBERTa text encoder (random init; RoBERTa from
    the hub name ``roberta-base``), in eval mode."""
    from amr.clap.compat import import_laion

    model, _ = import_laion().create_model(amodel, "roberta", precision="fp32", device="cpu", enable_fusion=False)
    return model.eval()


def laion_state(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """The state dict of a LAION-CLAP checkpoint (``module.`` prefixes removed) and its audio
    architecture; a fusion checkpoint or unknown audio encoder is one line."""
    obj = read(path)
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else obj
    if not isinstance(state, dict) or _PATCH not in {str(k).removeprefix("module.") for k in state}:
        raise InputError("not a LAION-CLAP checkpoint (no HTSAT audio encoder weights)", path)
    state = {str(k).removeprefix("module."): v for k, v in state.items()}
    if any(k.startswith(("audio_branch.fusion_model", "audio_branch.mel_conv")) for k in state):
        raise InputError("a fusion checkpoint: amr reads the non-fusion ones (e.g. 630k-audioset-best.pt)", path)
    width = int(state[_PATCH].shape[0])
    if width not in AMODELS:
        raise InputError(f"an audio encoder of patch width {width}; known: {sorted(AMODELS)}", path)
    return state, AMODELS[width]


def quantize(x: np.ndarray) -> np.ndarray:
    """To 16 bits and back, as the package quantises waveforms before its audio encoder."""
    return (np.clip(x, -1.0, 1.0) * 32767.0).astype(np.int16).astype(np.float32) / 32767.0


class LaionEncoder:
    """The two encoders of a LAION-CLAP checkpoint, per 1 s window and per token.

    ``audio(windows)``: (N, 48000) -> (N, D): each window quantised to 16 bits, repeated to the
    package's 10 s input, through HTSAT; ``["embedding"]`` (before the projection).
    ``text(captions)``: RoBERTa's last hidden state (the ``roberta-base`` tokenizer, at most 77
    tokens), cut to the attention mask: one (L_i, 768) array per caption.
    """

    sample_rate = SAMPLE_RATE

    def __init__(self, weights: str | Path | None = None, device: str | None = None) -> None:
        from amr.clap.compat import import_laion

        import_laion()  # a missing extra is said first
        path = weights_file(weights, HUB_REPO, HUB_FILE, "LAION-CLAP")
        state, self.amodel = laion_state(path)
        try:
            self.model: Any = new_laion(self.amodel)
        except OSError as e:
            raise InputError(
                f"cannot load RoBERTa's config and tokenizer ({type(e).__name__}); laion_clap needs 'roberta-base' "
                "(and the bert-base-uncased and facebook/bart-base tokenizers) in the Hugging Face cache",
                "roberta-base",
            ) from None
        ignored = load_strict(self.model, state, path, f"LAION-CLAP ({self.amodel})", ignore=_STALE_KEYS)
        self.report = LoadReport(str(path), len(self.model.state_dict()), ignored, f"LAION-CLAP {self.amodel}")
        self.audio_dim = int(self.model.audio_branch.num_features)  # 768 for HTSAT-tiny, 1024 for HTSAT-base
        self.device = pick_device(device)
        self.model.to(self.device)
        from transformers import RobertaTokenizer

        self.tokenizer = RobertaTokenizer.from_pretrained("roberta-base")

    @torch.inference_mode()
    def audio(self, windows: np.ndarray | torch.Tensor) -> np.ndarray:
        x = torch.from_numpy(quantize(np.asarray(windows, dtype=np.float32)))
        x = x.repeat(1, CLIP // x.shape[1])
        x = torch.nn.functional.pad(x, (0, CLIP - x.shape[1])).to(self.device)
        longer = torch.zeros(len(x), dtype=torch.bool, device=self.device)
        out = self.model.encode_audio({"waveform": x, "longer": longer}, device=self.device)
        return out["embedding"].float().cpu().numpy()

    @torch.inference_mode()
    def text(self, captions: Sequence[str]) -> list[np.ndarray]:
        """Padded to 77 tokens, as the package tokenises; each caption's states do not depend on
        the padding (RoBERTa masks padded keys)."""
        tok = self.tokenizer(
            list(captions), padding="max_length", truncation=True, max_length=TEXT_LEN, return_tensors="pt"
        )
        ids, mask = tok["input_ids"].to(self.device), tok["attention_mask"].to(self.device)
        hidden = self.model.text_branch(input_ids=ids, attention_mask=mask)["last_hidden_state"]
        lengths = mask.sum(1).tolist()
        return [np.ascontiguousarray(h[: int(n)]) for h, n in zip(hidden.float().cpu().numpy(), lengths, strict=True)]
