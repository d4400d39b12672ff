"""What names a run: its system (the experiment and the overrides that set it apart, never the
seed), as short, filesystem-safe labels for sweep folders, W&B groups, run names and tags.

    >>> system_name("system1", ["augment.backtranslation.pivots=[de]", "seed=2", "paths.root=/x"])
    'system1,pivots=de'
"""

from __future__ import annotations

import hashlib
import os
import re

from amr.results.systems import changes_results, key_root, override_key

SWEEP_KEYS_ENV = "AMR_SWEEP_KEYS"  # set by amr-train -m: the keys the sweep varies
MAX_TAG = 64  # W&B's limit on a tag's length


def short_value(value: str, limit: int = 24) -> str:
    """A value fit for a name: list brackets dropped, items joined by ``+``; a path or a long value
    becomes its last part plus a 6-character hash of the whole."""
    v = value.strip()
    if v.startswith("[") and v.endswith("]"):
        v = "+".join(x.strip() for x in v[1:-1].split(","))
    if "/" in v or len(v) > limit:
        tail = re.sub(r"[^A-Za-z0-9._+-]", "_", v.rstrip("/").rsplit("/", 1)[-1])[: limit - 7]
        v = f"{tail}-{hashlib.sha1(value.encode()).hexdigest()[:6]}"
    return re.sub(r"[^A-Za-z0-9._+=-]", "_", v)


def label(overrides: list[str]) -> list[str]:
    """``key=value`` items with the key's last part (the whole key where two would collide)."""
    keys = [override_key(o) for o in overrides]
    last = [re.split(r"[./]", k)[-1] for k in keys]
    out = []
    for o, k, short in zip(overrides, keys, last, strict=True):
        name = short if last.count(short) == 1 else k
        out.append(f"{name}={short_value(o.split('=', 1)[1])}")
    return out


def system_overrides(overrides: list[str], sweep_keys: set[str] | None = None) -> list[str]:
    """The overrides that set a run's system apart (:func:`amr.results.systems.changes_results`):
    those a sweep varies (when ``sweep_keys`` is given), else every one."""
    kept = [o for o in overrides if changes_results(o)]
    if sweep_keys is not None:
        kept = [o for o in kept if override_key(o) in sweep_keys]
    return kept


def sweep_keys() -> set[str] | None:
    """The keys the current sweep varies, or None outside a sweep."""
    value = os.environ.get(SWEEP_KEYS_ENV)
    return None if value is None else {k for k in value.split(",") if k}


def system_name(experiment: str, overrides: list[str], keys: set[str] | None = None) -> str:
    return ",".join([experiment, *label(system_overrides(overrides, keys))])


def tags(overrides: list[str]) -> list[str]:
    """One tag per override (Hydra's own keys left out), each within W&B's length limit."""
    out = []
    for o in overrides:
        if "=" not in o or key_root(override_key(o)) == "hydra":
            continue
        tag = o if len(o) <= MAX_TAG else f"{override_key(o)[:30]}={short_value(o.split('=', 1)[1])}"
        out.append(tag[:MAX_TAG])
    return out
