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
