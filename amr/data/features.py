"""Official CLAP feature layout on disk, and per-item npz reading.

A dataset root holds, for MS-CLAP 2023 (the official features)::

    data/<name>_{train,val,test}_release.jsonl
    features/<feat_dir>/clap/{vid}.npz               key "features",          (T, 768), 1 frame/s
    features/<feat_dir>/clap_text/qid{qid}.npz       key "last_hidden_state", (L, 768), token level

Another encoder's features (:class:`Encoder`, the ``features`` config group) sit beside them in
their own folders (``features/<feat_dir>/<audio>/``, ``<text>/``) with their own widths.
Caption versions (back-translations or synthetic paraphrases) keep the text layout one folder
down, one folder per pivot language::

    features/<feat_dir>/<text>_versions/<pivot>/qid{qid}.npz     (clap_text_versions for MS-CLAP)
    data/<name>_<split>_paraphrases.jsonl            {"qid", "query", "versions": [{"pivot", "text"}],
                                                      "dropped": [pivots whose text equalled the original]}
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from amr.errors import InputError

AUDIO_KEY = "features"
TEXT_KEY = "last_hidden_state"
FEAT_DIM = 768
EXTRACTED = ("msclap2023", "laion_clap")  # encoders amr runs on audio (amr.clap.encoders); others' are brought


@dataclass
class Encoder:
    """The features of one audio-text encoder: where they lie under ``features/<feat_dir>/`` and
    how wide they are (one audio frame per second). The ``features`` config group; the default is
    MS-CLAP 2023 with the official folder names."""

    name: str = "msclap2023"  # names the feature set in checkpoints, system names and messages
    audio: str = "clap"  # features/<feat_dir>/<audio>/{vid}.npz, key "features"
    text: str = "clap_text"  # features/<feat_dir>/<text>/qid{qid}.npz, key "last_hidden_state"
    audio_dim: int = FEAT_DIM  # width of an audio frame
    text_dim: int = FEAT_DIM  # width of a text token

    @classmethod
    def of(cls, cfg: Any) -> Encoder:
        """From a config node or dict (a checkpoint's record); None: MS-CLAP 2023."""
        if cfg is None:
            return cls()
        return cls(**{k: cfg[k] for k in cls.__dataclass_fields__ if k in cfg})

    def record(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def extracted(self) -> bool:
        """Whether amr computes these features from audio (``amr predict`` on a recording)."""
        return self.name in EXTRACTED


MSCLAP_2023 = Encoder()


def encoder_conf(name: str, **settings: Any) -> Encoder:
    """The encoder of the ``features`` group option ``name`` (``conf/features/<name>.yaml``, the
    one place an encoder's folders and widths are written), with ``settings`` over it."""
    from omegaconf import OmegaConf

    path = Path(__file__).resolve().parents[2] / "conf" / "features" / f"{name}.yaml"
    if not path.is_file():
        raise InputError(f"no features option '{name}' (conf/features/{name}.yaml)", name)
    conf = OmegaConf.to_container(OmegaConf.load(path))
    assert isinstance(conf, dict)
    return Encoder.of({**conf, **settings})


@dataclass(frozen=True)
class FeatureLayout:
    """The files of one feature folder (``features/<feat_dir>``) for one encoder; feature
    extraction writes them, the data layer reads them."""

    folder: Path
    encoder: Encoder = field(default_factory=Encoder)

    @property
    def audio_dir(self) -> Path:
        return self.folder / self.encoder.audio

    def text_dir(self, pivot: str | None = None) -> Path:
        text = self.encoder.text
        return self.folder / text if pivot is None else self.folder / f"{text}_versions" / pivot

    def audio_file(self, vid: str) -> Path:
        return self.audio_dir / f"{vid}.npz"

    def text_file(self, qid: str, pivot: str | None = None) -> Path:
        return self.text_dir(pivot) / f"qid{qid}.npz"


@dataclass(frozen=True)
class Layout:
    """Where one dataset's files live under a root."""

    root: Path
    name: str  # annotation prefix, e.g. "castella", "clotho_moment"
    feat_dir: str  # feature folder, e.g. "castella", "clotho-moment"
    encoder: Encoder = field(default_factory=Encoder)

    def annotations(self, split: str) -> Path:
        return self.root / "data" / f"{self.name}_{split}_release.jsonl"

    def versions_file(self, split: str) -> Path:
        return self.root / "data" / f"{self.name}_{split}_paraphrases.jsonl"

    @property
    def features(self) -> FeatureLayout:
        return FeatureLayout(self.root / "features" / self.feat_dir, self.encoder)


def load_npz_array(path: Path, key: str, width: int = FEAT_DIM) -> np.ndarray:
    """Read one array from an npz file and check it: 2-d, ``width`` wide, finite, non-empty."""
    try:
        with np.load(path) as z:
            if key not in z:
                raise InputError(f"no key '{key}' (has {sorted(z.files)})", path)
            arr = z[key]
    except InputError:
        raise
    except FileNotFoundError:
        raise InputError("feature file missing", path) from None
    except Exception as e:  # truncated (BadZipFile, EOFError, zlib.error), not an npz, unreadable, ...
        raise InputError(f"unreadable npz ({type(e).__name__}: {e})", path) from None
    check_features(arr, path, width)
    return arr


def check_features(arr: np.ndarray, path: Path | str, width: int = FEAT_DIM) -> None:
    if arr.ndim != 2 or arr.shape[1] != width:
        raise InputError(f"wrong feature shape {tuple(arr.shape)}, expected (n, {width})", path)
    if arr.shape[0] == 0:
        raise InputError("empty feature array", path)
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).any(1).argmax())
        raise InputError(f"NaN or inf in features (first at row {bad})", path)


def check_present(paths: Sequence[Path], kind: str, ids: Sequence[str]) -> None:
    """Fail before any long work if feature files are missing: count and first ids."""
    missing = [i for p, i in zip(paths, ids, strict=True) if not p.is_file()]
    if missing:
        folder = paths[0].parent if paths else "?"
        raise InputError(f"{len(missing)} {kind} feature file(s) missing, first: {', '.join(missing[:5])}", folder)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Official frame normalisation: x / (||x||_2 + 1e-5), in float32."""
    x = x.astype(np.float32, copy=False)
    return x / (np.linalg.norm(x, axis=-1, keepdims=True) + 1e-5)
