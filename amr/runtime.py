"""Process-wide settings for CPU training speed.

Every training step allocates and frees the same large activations (16-80 MB each). glibc hands
allocations above its mmap threshold straight to the kernel and returns them on free, so each step
pays page faults and the kernel's zeroing of fresh pages for every one of them: elementwise ops on
fresh tensors ran at half speed. Keeping them on the heap and never trimming it lets freed memory
be reused at once (the resident size stays at the peak of a step instead of shrinking between
steps). Applied by ``amr-train`` and the benchmarks; a no-op where the C library has no
``mallopt`` (non-glibc systems) or with ``AMR_TUNE_MALLOC=0``.

Also the seed of each training step's generator (:func:`step_seed`), shared by a run alone and
the members of stacked runs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from collections.abc import Iterable, Iterator
from typing import TypeVar

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4
_done = False


T = TypeVar("T")


def tune_allocator() -> bool:
    """Serve large allocations from a never-trimmed heap (glibc); returns whether it applied."""
    global _done
    if _done:
        return True
    if os.environ.get("AMR_TUNE_MALLOC", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = all(
        mallopt(option, value)
        for option, value in ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1), (_M_TOP_PAD, 256 << 20))
    )
    _done = ok
    log.debug("allocator tuning %s", "applied" if ok else "refused")
    return ok


def step_seed(seed: int, epoch: int, batch_idx: int) -> int:
    """The seed of torch's generator for a training step: each step's dropout depends on (seed,
    epoch, batch) alone, so a resumed run, and a stacked member, draw what an uninterrupted run
    alone draws."""
    return (seed * 1_000_003 + epoch) * 100_003 + batch_idx


def is_rank_zero() -> bool:
    """Only global rank 0 writes files (DDP starts the same command once per process)."""
    from lightning_fabric.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def progress(items: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """``items`` with a progress bar on stderr (tqdm's, as the extraction commands show), for the
    steps of a command that take more than a few seconds."""
    from tqdm import tqdm

    yield from tqdm(items, desc=desc, total=total, unit=unit, leave=False, dynamic_ncols=True)
