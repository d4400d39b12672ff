from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("AMR_SHARED", ROOT.parent / "shared"))
PARITY = SHARED / "parity"
ANNOTATIONS = SHARED / "data" / "annotations"


def need_shared(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is absent (the shared parity material is not beside this checkout)")
    return path


@pytest.fixture(scope="session")
def clap(tmp_path_factory) -> Path:
    """A random-weight MS-CLAP 2023 and its offline hub cache, built once per test session."""
    import importlib.util

    from tests.helpers import run_python

    if importlib.util.find_spec("msclap") is None:
        pytest.skip("msclap is not installed (pip install -e '.[clap]')")
    root = tmp_path_factory.mktemp("tiny_clap")
    run_python(["-m", "amr.testing.tiny_clap", str(root)], root)
    return root


@pytest.fixture(scope="session")
def audio_dir(tmp_path_factory) -> Path:
    """Good recordings (GOOD) and every kind of bad one, as an audio folder."""
    import numpy as np

    from amr.clap.audio import SAMPLE_RATE
    from tests.helpers import GOOD, wav_sample_rate_zero

    sf = pytest.importorskip("soundfile")
    d = tmp_path_factory.mktemp("audio")
    rng = np.random.default_rng(0)
    for name, (sec, sr, ch) in GOOD.items():
        x = 0.1 * rng.standard_normal((int(round(sec * sr)), ch)).astype(np.float32)
        sf.write(d / (f"{name}.flac" if ch == 2 else f"{name}.wav"), x, sr)
    sf.write(d / "short.wav", 0.1 * rng.standard_normal(int(0.6 * SAMPLE_RATE)).astype(np.float32), SAMPLE_RATE)
    sf.write(d / "silent.wav", np.zeros(2 * SAMPLE_RATE, dtype=np.float32), SAMPLE_RATE)
    sf.write(d / "empty.wav", np.zeros(0, dtype=np.float32), SAMPLE_RATE)
    (d / "garbage.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk" * 8)
    wav_sample_rate_zero(d / "rate0.wav")
    (d / "notes.txt").write_text("not audio, not listed")
    return d
