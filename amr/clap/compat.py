"""Import ``msclap`` and ``laion_clap`` on installs where their ``torchaudio`` (and, for
``laion_clap``, ``torchvision``) dependencies cannot load.

msclap imports torchaudio at module level but this project never calls it (audio is read with
soundfile and resampled with soxr). PyPI's torchaudio wheels are CUDA builds that fail to import
beside a CPU-only torch (``OSError: libc10_cuda.so``). When the real module cannot be imported, a
small stand-in with the two functions msclap names (``load``, ``transforms.Resample``), written on
soundfile and soxr, is registered instead. A working torchaudio is always used as is.

``laion_clap`` imports torchvision at module level for its training data code; amr uses only its
model. Without a loadable torchvision, a stand-in whose image transforms refuse to run is
registered (only the package's fusion models, which amr refuses, would call one).
"""

from __future__ import annotations

import importlib.machinery
import logging
import sys
import types
from typing import Any

from amr.errors import MissingExtra

log = logging.getLogger(__name__)


def _standin() -> types.ModuleType:
    import numpy as np
    import torch

    def load(path: Any, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, int]:
        import soundfile as sf

        x, sr = sf.read(str(path), dtype="float32", always_2d=True)
        return torch.from_numpy(np.ascontiguousarray(x.T)), int(sr)

    class Resample(torch.nn.Module):
        def __init__(self, orig_freq: int, new_freq: int, **kwargs: Any) -> None:
            super().__init__()
            self.orig_freq, self.new_freq = int(orig_freq), int(new_freq)

        def forward(self, wave: torch.Tensor) -> torch.Tensor:
            import soxr

            x = wave.detach().cpu().numpy()
            y = soxr.resample(np.atleast_2d(x).T, self.orig_freq, self.new_freq)
            y = np.ascontiguousarray(np.atleast_2d(y.T) if y.ndim > 1 else y[None])
            return torch.from_numpy(y.reshape(*x.shape[:-1], -1)).to(wave.dtype)

    ta = types.ModuleType("torchaudio")
    tr = types.ModuleType("torchaudio.transforms")
    tr.Resample = Resample  # type: ignore[attr-defined]
    ta.transforms = tr  # type: ignore[attr-defined]
    ta.load = load  # type: ignore[attr-defined]
    ta.__version__ = "0+amr-standin"  # type: ignore[attr-defined]
    # transformers calls importlib.util.find_spec("torchaudio"), which needs a spec
    ta.__spec__ = importlib.machinery.ModuleSpec("torchaudio", None)
    tr.__spec__ = importlib.machinery.ModuleSpec("torchaudio.transforms", None)
    return ta


def ensure_torchaudio() -> None:
    """Make ``import torchaudio`` succeed: the real module if it loads, else the stand-in."""
    if "torchaudio" in sys.modules:
        return
    try:
        import torchaudio  # noqa: F401
    except Exception as e:  # the CUDA wheel raises OSError; a missing one ImportError
        for name in [m for m in sys.modules if m == "torchaudio" or m.startswith("torchaudio.")]:
            del sys.modules[name]
        log.debug("torchaudio unusable (%s); using the soundfile/soxr stand-in", e)
        ta = _standin()
        sys.modules["torchaudio"] = ta
        sys.modules["torchaudio.transforms"] = ta.transforms  # type: ignore[attr-defined]


def import_msclap() -> types.ModuleType:
    """``msclap.models.clap``, with a clear error when the optional extra is missing."""
    ensure_torchaudio()
    try:
        import msclap.models.clap as clap_models
    except ImportError as e:
        raise MissingExtra(
            f"MS-CLAP feature extraction needs the optional extra: pip install -e '.[clap]' ({e})"
        ) from None
    return clap_models


def _inert_module(name: str) -> types.ModuleType:
    """A package whose every attribute is a class that refuses to be built (names resolve at import)."""

    def refuse(attr: str) -> type:
        def init(self: Any, *args: Any, **kwargs: Any) -> None:
            raise RuntimeError(f"{name}.{attr}: torchvision is not installed (amr's stand-in only lets imports pass)")

        return type(attr, (), {"__init__": init})

    mod = types.ModuleType(name)
    mod.__getattr__ = refuse  # type: ignore[method-assign]
    mod.__path__ = []  # type: ignore[attr-defined]  # a package: submodules import
    mod.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
    mod.__version__ = "0+amr-standin"  # type: ignore[attr-defined]
    return mod


def ensure_torchvision() -> None:
    """Make ``import torchvision`` succeed: the real module if it loads, else an inert stand-in."""
    if "torchvision" in sys.modules:
        return
    try:
        import torchvision  # noqa: F401
    except Exception as e:
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        log.debug("torchvision unusable (%s); using an inert stand-in", e)

        for name in (
            "torchvision",
            "torchvision.datasets",
            "torchvision.transforms",
            "torchvision.ops",
            "torchvision.ops.misc",
        ):
            sys.modules[name] = _inert_module(name)


def import_laion() -> types.ModuleType:
    """``laion_clap.hook`` (its model factory), with a clear error when the optional extra is missing."""
    ensure_torchaudio()
    ensure_torchvision()
    try:
        import laion_clap.hook as hook
    except ImportError as e:
        raise MissingExtra(
            f"LAION-CLAP feature extraction needs the optional extra: pip install -e '.[laion]' ({e})"
        ) from None
    return hook
