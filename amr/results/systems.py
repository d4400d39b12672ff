"""What makes a system: the overrides that change a run's result. One rule for every place that
names or groups runs: job folders, W&B groups and names (``amr.training.naming``) and the
report's rows (``amr.results.report``).

Never a system: where files go (``paths``, ``hydra``), how a run is logged (``logger``, ``tags``),
how it is read (``num_workers``), which seed, resuming or evaluating a checkpoint (``ckpt_path``,
``fit``) and stacking seeds (``stacked_runs``). Callbacks are (early stopping and weight averaging
change the weights).
"""

from __future__ import annotations

import re

NOT_SYSTEM = (
    "hydra", "paths", "logger", "seed", "experiment", "ckpt_path", "fit", "num_workers", "tags", "stacked_runs",
)  # fmt: skip


def override_key(override: str) -> str:
    """``+a.b=c`` -> ``a.b``; ``hydra/launcher=joblib`` -> ``hydra/launcher``."""
    return override.split("=", 1)[0].lstrip("+~")


def key_root(key: str) -> str:
    """``model.hidden_dim`` -> ``model``; ``hydra/launcher`` -> ``hydra``."""
    return re.split(r"[./]", key, maxsplit=1)[0]


def changes_results(override: str) -> bool:
    """True for an override ``key=value`` that sets a system apart."""
    return "=" in override and key_root(override_key(override)) not in NOT_SYSTEM
