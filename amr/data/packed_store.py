"""Packed feature store: all arrays of a split in one memory-mapped file per modality.

The first use of a split reads every npz file once and appends its rows to ``data.bin``; an
``index.json`` keeps each id's row offset and length. Later runs memory-map the file (no npz is
read again; memory stays flat however large the split). A pack lives in a folder named by a hash of
the source files (names, sizes, mtimes) and of the packing options, so any change to the sources
makes a new pack. The folder is built under a temporary name and renamed into place when complete:
an interrupted pack leaves nothing that a later run would trust.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from amr.data.features import FEAT_DIM, check_present, l2_normalize, load_npz_array
from amr.errors import InputError

log = logging.getLogger(__name__)
PACK_FORMAT = 2


class PackedArrays:
    """Read side: ``pack[key]`` is a (n, d) read-only view into the memory map."""

    def __init__(self, folder: str | Path) -> None:
        folder = Path(folder)
        meta = json.loads((folder / "index.json").read_text())
        self.folder = folder
        self.dim: int = meta["dim"]
        self.dtype = np.dtype(meta["dtype"])
        self.keys: list[str] = meta["keys"]
        self.offsets = np.asarray(meta["offsets"], dtype=np.int64)  # (n + 1,) row offsets
        self.index = {k: i for i, k in enumerate(self.keys)}
        total = int(self.offsets[-1])
        mm = np.memmap(folder / "data.bin", dtype=self.dtype, mode="r", shape=(max(total, 1), self.dim))
        self.data = mm.view(np.ndarray)  # plain ndarray over the map: cheaper slicing than np.memmap

    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, key: str) -> bool:
        return key in self.index

    def __getitem__(self, key: str) -> np.ndarray:
        i = self.index[key]
        return self.data[self.offsets[i] : self.offsets[i + 1]]

    def verify(self, rows_per_chunk: int = 1 << 16) -> None:
        """Re-check every stored array for NaN/inf (``data.verify=true``); one line naming the first."""
        for start in range(0, int(self.offsets[-1]), rows_per_chunk):
            block = self.data[start : start + rows_per_chunk]
            bad = ~np.isfinite(block).all(1)
            if bad.any():
                row = start + int(bad.argmax())
                i = int(np.searchsorted(self.offsets, row, side="right")) - 1
                raise InputError(f"NaN or inf in '{self.keys[i]}' (row {row - self.offsets[i]})", self.folder)


def _source_signature(paths: Sequence[Path]) -> list[tuple[str, int, int, int, int]]:
    """Path, size, mtime, inode and ctime of each source: a file rewritten in place (even with its
    old size and mtime put back) or replaced changes its ctime or inode, so the pack is rebuilt."""
    sig = []
    for p in paths:
        st = p.stat()
        sig.append((str(p), st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns))
    return sig


def pack_key(keys: Sequence[str], paths: Sequence[Path], npz_key: str, dtype: str, normalize: bool) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"format": PACK_FORMAT, "npz_key": npz_key, "dtype": dtype, "normalize": normalize}).encode())
    for k, sig in zip(keys, _source_signature(paths), strict=True):
        h.update(("\0".join(map(str, (k, *sig))) + "\n").encode())
    return h.hexdigest()[:20]


def open_or_build(
    cache_dir: str | Path,
    keys: Sequence[str],
    paths: Sequence[Path],
    npz_key: str,
    dtype: str = "float32",
    normalize: bool = False,
    kind: str = "feature",
    verify: bool = False,
    width: int = FEAT_DIM,
) -> PackedArrays:
    """Open the pack for these sources, building it first if no complete pack exists.

    Args:
        keys: one id per array (vid, qid, or "<pivot>/<qid>" for a caption version).
        paths: the npz file of each id.
        npz_key: array name inside each npz.
        dtype: storage dtype ("float32" or "float16").
        normalize: store frames L2-normalised (audio), as the official loader computes them.
        verify: re-check every array of an existing pack for NaN/inf.
        width: of every array (the encoder's audio or text width).
    Raises:
        InputError: missing files (count and first ids), unreadable file, wrong shape, NaN/inf.
    """
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate keys in a pack")
    check_present(paths, kind, list(keys))
    cache_dir = Path(cache_dir)
    folder = cache_dir / f"{kind}-{pack_key(keys, paths, npz_key, dtype, normalize)}"
    if (folder / "index.json").is_file():
        pack = PackedArrays(folder)
        if pack.dim != width:
            raise InputError(f"{kind} features are {pack.dim}-d, expected {width}-d", paths[0].parent)
        if verify:
            pack.verify()
        return pack
    _build(folder, keys, paths, npz_key, dtype, normalize, kind, width)
    return PackedArrays(folder)


def _build(
    folder: Path,
    keys: Sequence[str],
    paths: Sequence[Path],
    npz_key: str,
    dtype: str,
    normalize: bool,
    kind: str,
    width: int,
) -> None:
    """Write the pack into a temporary folder beside ``folder``, then rename it into place."""
    cache_dir = folder.parent
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=cache_dir))
    try:
        offsets = [0]
        with open(tmp / "data.bin", "wb") as f:
            for p in tqdm(paths, desc=f"packing {len(paths)} {kind} files", disable=len(paths) < 2000, leave=False):
                arr = load_npz_array(p, npz_key, width)
                if normalize:
                    arr = l2_normalize(arr)
                f.write(np.ascontiguousarray(arr, dtype=dtype).tobytes())
                offsets.append(offsets[-1] + len(arr))
            f.flush()
            os.fsync(f.fileno())
        meta = {
            "format": PACK_FORMAT,
            "dim": width,
            "dtype": dtype,
            "keys": list(keys),
            "offsets": offsets,
            "normalized": normalize,
            "npz_key": npz_key,
        }
        (tmp / "index.json").write_text(json.dumps(meta))
        try:
            os.rename(tmp, folder)
        except OSError:  # another process finished the same pack first: use theirs
            shutil.rmtree(tmp, ignore_errors=True)
        log.info("packed %d %s arrays (%d rows) into %s", len(keys), kind, offsets[-1], folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
