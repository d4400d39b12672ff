"""amr: audio moment retrieval experiments on the official DCASE 2026 Task 6 baseline."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Moment", "Predictor", "__version__"]


def __getattr__(name: str) -> Any:  # keep `import amr` light: torch loads only when asked for
    if name in ("Predictor", "Moment"):
        from amr.inference import predictor

        return getattr(predictor, name)
    raise AttributeError(f"module 'amr' has no attribute {name!r}")
