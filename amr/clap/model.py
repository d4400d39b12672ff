"""MS-CLAP 2023 through the ``msclap`` package: strict weight loading, the 768-d pre-projection
audio embedding of each 1 s window, and GPT-2 token-level hidden states of captions."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from amr.checkpoints import load_strict, read_clap_state
from amr.clap.audio import SAMPLE_RATE
from amr.errors import InputError

log = logging.getLogger(__name__)

HUB_REPO = "microsoft/msclap"
HUB_FILE = "CLAP_weights_2023.pth"
EOS = " <|endoftext|>"  # appended by msclap's preprocess_text for GPT-2 text encoders
# derived buffers (causal masks) that older transformers saved with GPT-2 and newer ones rebuild
_STALE_KEYS = re.compile(r"\.attn\.(bias|masked_bias)$|(^|\.)position_ids$")


def pick_device(device: str | None = None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class LoadReport:
    """What strict loading found; ``ignored`` are stale derived buffers, never weights."""

    path: str
    loaded: int
    ignored: list[str] = field(default_factory=list)
    what: str = "MS-CLAP 2023"

    def line(self) -> str:
        extra = f"; {len(self.ignored)} stale buffer(s) ignored ({self.ignored[0]}, ...)" if self.ignored else ""
        return f"{self.what} weights: {self.loaded} tensors loaded strictly from {self.path}{extra}"


def weights_file(weights: str | Path | None, repo: str, file: str, what: str) -> Path:
    """``weights``, checked to exist; None: ``repo``'s ``file`` from the hub (its cache offline).
    Either failing is one line, with the way out."""
    if weights is None:
        from huggingface_hub import hf_hub_download

        try:
            weights = hf_hub_download(repo, file)
        except Exception as e:  # offline, no cache, hub error
            raise InputError(f"cannot get {file} ({type(e).__name__}); pass --clap-weights PATH", repo) from None
    path = Path(weights)
    if not path.is_file():
        raise InputError(f"{what} weights file not found", path)
    return path


def clap_config() -> dict[str, Any]:
    """msclap's packaged 2023 configuration (imports msclap)."""
    import importlib.resources

    import yaml

    from amr.clap.compat import import_msclap

    import_msclap()
    text = importlib.resources.files("msclap").joinpath("configs/config_2023.yml").read_text()
    return yaml.safe_load(text)


def new_clap(cfg: dict[str, Any]) -> Any:
    """``msclap.models.clap.CLAP`` as msclap's wrapper builds it (random init; GPT-2 from ``text_model``)."""
    from amr.clap.compat import import_msclap

    return import_msclap().CLAP(
        audioenc_name=cfg["audioenc_name"],
        sample_rate=cfg["sampling_rate"],
        window_size=cfg["window_size"],
        hop_size=cfg["hop_size"],
        mel_bins=cfg["mel_bins"],
        fmin=cfg["fmin"],
        fmax=cfg["fmax"],
        classes_num=cfg["num_classes"],
        out_emb=cfg["out_emb"],
        text_model=cfg["text_model"],
        transformer_embed_dim=cfg["transformer_embed_dim"],
        d_proj=cfg["d_proj"],
    )


class ClapEncoder:
    """The two encoders of MS-CLAP 2023, used as the official feature extractors use them.

    ``audio(windows)``: (N, 44100) -> (N, 768), ``clap.audio_encoder.base(x)["embedding"]``.
    ``text(captions)``: GPT-2 last hidden state of ``caption + " <|endoftext|>"`` (pad token '!',
    at most 77 tokens), cut to the attention mask: one (L_i, 768) array per caption.
    """

    sample_rate = SAMPLE_RATE
    audio_dim = 768  # the HTSAT embedding before the projection

    def __init__(self, weights: str | Path | None = None, device: str | None = None) -> None:
        cfg = clap_config()
        self.text_len = int(cfg["text_len"])
        path = weights_file(weights, HUB_REPO, HUB_FILE, "MS-CLAP")
        try:
            self.clap: Any = new_clap(cfg)
        except OSError as e:  # msclap resolves its text encoder by hub name, even with local weights
            name = cfg["text_model"]
            raise InputError(
                f"cannot load the text encoder's config and tokenizer ({type(e).__name__}); msclap needs "
                f"'{name}' in the Hugging Face cache (run once online, or set HF_HOME to a cache holding it)",
                name,
            ) from None
        ignored = load_strict(self.clap, read_clap_state(path), path, "MS-CLAP 2023", ignore=_STALE_KEYS)
        self.report = LoadReport(str(path), len(self.clap.state_dict()), ignored)
        self.device = pick_device(device)
        self.clap.eval().to(self.device)
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(cfg["text_model"])
        self.tokenizer.add_special_tokens({"pad_token": "!"})
        self.tokenizer.padding_side = "right"

    @torch.inference_mode()
    def audio(self, windows: np.ndarray | torch.Tensor) -> np.ndarray:
        x = torch.as_tensor(np.asarray(windows, dtype=np.float32)).to(self.device)
        return self.clap.audio_encoder.base(x)["embedding"].float().cpu().numpy()

    def tokenize(self, captions: Sequence[str], padding: str = "longest") -> dict[str, torch.Tensor]:
        return self.tokenizer(
            [c + EOS for c in captions],
            padding=padding,
            truncation=True,
            max_length=self.text_len,
            return_tensors="pt",
        )

    @torch.inference_mode()
    def text(self, captions: Sequence[str], padding: str = "longest") -> list[np.ndarray]:
        """Right padding and GPT-2's causal attention make each caption's states independent of
        the batch; ``padding="max_length"`` pads to 77 as the official script does (same values)."""
        tok = self.tokenize(captions, padding)
        tok = {k: v.to(self.device) for k, v in tok.items() if k in ("input_ids", "attention_mask")}
        hidden = self.clap.caption_encoder.base(**tok)[0].float().cpu().numpy()
        lengths = tok["attention_mask"].sum(1).tolist()
        return [np.ascontiguousarray(h[: int(n)]) for h, n in zip(hidden, lengths, strict=True)]
