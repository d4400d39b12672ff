"""Data loading: items/s from the packed store vs the official per-item npz loader, and DataLoader
batches/s against the training step rate."""

from __future__ import annotations

import json
import os
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from amr.data.datamodule import EpochSampler
from amr.data.dataset import MomentDataset, SplitData, collate
from amr.data.device_batches import DeviceArrays, DeviceLoader
from amr.data.synth import generate
from benchmarks.common import peak_rss_mb, table, update_report


class PerItemNpz:
    """What the official dataset does per item: np.load two npz files, L2-normalise, time
    features, span and saliency labels with Python's random."""

    def __init__(self, data: SplitData, layout) -> None:
        self.q = data.queries
        self.layout = layout

    def __len__(self) -> int:
        return len(self.q)

    def __getitem__(self, i: int) -> dict:
        q = self.q[i]
        txt = np.load(self.layout.features.text_file(q.qid))["last_hidden_state"].astype(np.float32)
        aud = np.load(self.layout.features.audio_file(q.vid))["features"][:300].astype(np.float32)
        aud = aud / (np.linalg.norm(aud, axis=-1, keepdims=True) + 1e-5)
        n = len(aud)
        tef = np.arange(n) / n
        aud = np.concatenate([aud, tef[:, None], tef[:, None] + 1 / n], 1)
        w = list(q.windows or [[0, 1]])
        if len(w) > 5:
            random.shuffle(w)
        spans = np.asarray(w[:5]) / n
        st, ed = w[0]
        gs, ge = int(st), max(0, min(int(ed), n) - 1)
        gs = min(gs, ge)
        pos = random.sample(range(gs, ge + 1), 2) if gs != ge else [gs, gs]
        pool = list(range(0, gs)) + list(range(ge + 1, n))
        neg = random.sample(pool, 2) if len(pool) >= 2 else pos
        sal = np.zeros(n)
        sal[gs : ge + 1] = 1
        return {"txt": txt, "aud": aud, "spans": spans, "pos": pos, "neg": neg, "sal": sal}


def items_per_second(ds, n_pass: int = 2) -> float:
    for i in range(len(ds)):  # warm the page cache, as a second epoch would find it
        ds[i]
    t = time.perf_counter()
    for _ in range(n_pass):
        for i in range(len(ds)):
            ds[i]
    return n_pass * len(ds) / (time.perf_counter() - t)


def verify_rate(tmp: str, rows: int = 400_000) -> float:
    """GB/s of ``data.verify=true`` (the NaN/inf re-check of a whole pack) on a 1.2 GB float32 pack
    whose pages are not cached (written, then dropped from the page cache where the OS allows)."""
    from amr.data.packed_store import PackedArrays

    folder = Path(tmp) / "verify-pack"
    folder.mkdir()
    chunk = np.random.default_rng(0).standard_normal((rows // 8, 768)).astype(np.float32)
    with open(folder / "data.bin", "wb") as f:
        for _ in range(8):
            f.write(chunk.tobytes())
        f.flush()
        os.fsync(f.fileno())
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    index = {"keys": ["all"], "offsets": [0, rows], "dim": 768, "dtype": "float32"}
    (folder / "index.json").write_text(json.dumps(index))
    t = time.perf_counter()
    PackedArrays(folder).verify()
    return rows * 768 * 4 / 1e9 / (time.perf_counter() - t)


def device_batches_per_second(ds: MomentDataset, device: str, batch_size: int = 32) -> float:
    """Batches per second built by ``batches_on_device`` on ``device`` (the copy to it excluded)."""
    dev = torch.device(device)
    loader = DeviceLoader(
        ds, batch_size, EpochSampler(ds, 0), DeviceArrays(ds.data.audio, dev), DeviceArrays(ds.data.text, dev)
    )
    t = time.perf_counter()
    devices = {b["inputs"]["src_aud"].device.type for b in loader}
    n = len(loader)
    if device == "cuda":
        torch.cuda.synchronize()
    assert devices == {dev.type}
    return n / (time.perf_counter() - t)


def main() -> dict:
    res = {}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for preset, scale in (("clotho_moment", 0.4), ("castella", 0.5)):
            layout = generate(Path(tmp) / "data", preset, seed=0, scale=scale, dtype="float32")  # as the archives
            data = SplitData.load(layout, "train", Path(tmp) / "cache")
            packed = MomentDataset(data, train=True)
            npz = PerItemNpz(data, layout)
            frames = int(np.mean([len(packed[i]["aud"]) for i in range(len(packed))]))
            pk, nz = items_per_second(packed), items_per_second(npz)
            loader = DataLoader(packed, batch_size=32, shuffle=True, collate_fn=collate)
            t = time.perf_counter()
            n_batches = sum(1 for _ in loader)
            bps = n_batches / (time.perf_counter() - t)
            dbps = device_batches_per_second(packed, "cpu")
            res[preset] = {
                "mean_frames": frames,
                "packed_items_per_s": pk,
                "npz_items_per_s": nz,
                "speedup": pk / nz,
                "loader_batches_per_s_b32": bps,
                "device_batches_per_s_b32_cpu": dbps,
            }
            if torch.cuda.is_available():
                res[preset]["device_batches_per_s_b32_cuda"] = device_batches_per_second(packed, "cuda")
            rows.append([preset, frames, f"{pk:.0f}", f"{nz:.0f}", f"{pk / nz:.1f}x", f"{bps:.1f}", f"{dbps:.1f}"])
        res["verify_gb_per_s"] = verify_rate(tmp)
    res["peak_rss_mb"] = peak_rss_mb()
    heads = ["items", "frames", "packed items/s", "per-item npz items/s", "speed-up", "batches/s (b32)"]
    print(table(rows, [*heads, "batches_on_device (cpu) batches/s"]))
    gbs = res["verify_gb_per_s"]
    print(f"data.verify=true re-checks a pack at {gbs:.2f} GB/s: about {6 / gbs:.0f} s for Clotho-Moment train (6 GB)")
    update_report("data", res)
    return res


if __name__ == "__main__":
    main()
