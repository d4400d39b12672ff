"""Training/evaluation items and batches, exactly as the official ``StartEndDataset`` makes them,
read from the packed store, with the two augmentation hooks (caption versions, time mask)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from amr.data.annotations import OverlongPolicy, Query, load_annotations
from amr.data.features import AUDIO_KEY, TEXT_KEY, Layout
from amr.data.packed_store import PackedArrays, open_or_build
from amr.errors import InputError
from amr.io import read_jsonl

log = logging.getLogger(__name__)


@dataclass
class TimeMaskConfig:
    """Zero one stretch of CLAP frames (all 768 dims, never the 2 time features), training only."""

    p: float = 0.15
    max_ratio: float = 0.10

    def __post_init__(self) -> None:
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"time_mask.p must be in [0, 1], got {self.p}")
        if not 0.0 <= self.max_ratio <= 1.0:
            raise ValueError(f"time_mask.max_ratio must be in [0, 1], got {self.max_ratio}")


def time_mask_span(n_frames: int, cfg: TimeMaskConfig, u: Sequence[float]) -> tuple[int, int] | None:
    """The masked stretch [start, start + length) of a sample with ``n_frames`` valid frames.

    With probability p: length uniform in 1..max(1, floor(max_ratio * T)), start uniform so that the
    stretch fits inside the valid frames. At most one stretch per sample. ``u`` holds three uniform
    draws in [0, 1).
    """
    if u[0] >= cfg.p:
        return None
    longest = max(1, int(np.floor(cfg.max_ratio * n_frames)))
    length = min(1 + int(u[1] * longest), n_frames)
    start = int(u[2] * (n_frames - length + 1))
    return start, length


def time_features(n: int) -> np.ndarray:
    """(n, 2) official time features [i/n, i/n + 1/n] appended to the audio frames."""
    st = np.arange(n, dtype=np.float32) / n
    return np.stack([st, st + 1.0 / n], 1)


def _two_distinct(lo: int, n: int, u1: float, u2: float) -> list[int]:
    """Two distinct integers drawn uniformly from lo..lo+n-1 (n >= 2)."""
    a = int(u1 * n)
    b = int(u2 * (n - 1))
    return [lo + a, lo + (b + 1 if b >= a else b)]


@dataclass
class SplitData:
    """One split's annotations and its packed features (audio by vid, text by qid and version)."""

    queries: list[Query]
    audio: PackedArrays
    text: PackedArrays
    tags: list[str] = field(default_factory=list)  # caption-version tags available besides the original
    # "tag/qid" -> "qid" where the tag's back-translation equalled the original caption (dropped)
    alias: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(
        cls,
        layout: Layout,
        split: str,
        cache_dir: str | Path,
        dtype: str = "float32",
        tags: Sequence[str] = (),
        require_windows: bool = True,
        overlong: OverlongPolicy = "keep",
        annotations: str | Path | None = None,
    ) -> SplitData:
        """Validate annotations and feature files, then open (or build) the packs.

        Raises:
            InputError: bad annotation line, missing feature files (count and first ids), missing
                caption versions for a tag (the tag and the count missing).
        """
        path = Path(annotations) if annotations else layout.annotations(split)
        queries = load_annotations(path, require_windows=require_windows, overlong=overlong)
        alias = _check_versions(layout, split, queries, tags) if tags else {}
        vids = sorted({q.vid for q in queries})
        audio = open_or_build(
            Path(cache_dir), vids, [layout.audio_file(v) for v in vids], AUDIO_KEY, dtype, normalize=True, kind="audio"
        )
        keys = [q.qid for q in queries]
        paths = [layout.text_file(q.qid) for q in queries]
        for tag in tags:
            own = [q for q in queries if f"{tag}/{q.qid}" not in alias]
            keys += [f"{tag}/{q.qid}" for q in own]
            paths += [layout.text_file(q.qid, tag) for q in own]
        text = open_or_build(Path(cache_dir), keys, paths, TEXT_KEY, dtype, normalize=False, kind="text")
        return cls(queries, audio, text, list(tags), alias)


def _check_versions(layout: Layout, split: str, queries: Sequence[Query], tags: Sequence[str]) -> dict[str, str]:
    """Every query needs a feature file for every configured tag, unless the paraphrase file records
    that tag's back-translation as identical to the original (then the original serves). No silent
    fallback otherwise. Returns the aliases of the identical ones."""
    dropped: dict[str, set[str]] = {}
    listed: dict[str, int] = {}  # texts per tag in the paraphrase file, for the error message
    vf = layout.versions_file(split)
    if vf.is_file():
        for _, row in read_jsonl(vf):
            for tag in row.get("dropped", []):
                dropped.setdefault(tag, set()).add(str(row["qid"]))
            for v in row.get("versions", []):
                listed[v.get("pivot")] = listed.get(v.get("pivot"), 0) + 1
    alias = {}
    for tag in tags:
        missing = []
        for q in queries:
            if q.qid in dropped.get(tag, ()):
                alias[f"{tag}/{q.qid}"] = q.qid
            elif not layout.text_file(q.qid, tag).is_file():
                missing.append(q.qid)
        if missing:
            hint = ""
            if vf.is_file():
                hint = f" ({vf.name} lists {listed.get(tag, 0)} texts for '{tag}'; extract their text features)"
            raise InputError(
                f"caption version '{tag}' missing for {len(missing)} of {len(queries)} queries "
                f"(first: {', '.join(missing[:3])}){hint}",
                layout.text_dir(tag),
            )
    return alias


class MomentDataset(Dataset):
    """Items in the official format.

    Official semantics kept (spec section 4): audio frames L2-normalised and truncated to
    ``max_a_l``, 2 time features appended; text raw and untruncated; for training, at most
    ``max_windows`` windows drawn at random per epoch (spec quirk 8), spans normalised by the frame
    count (quirk 7), saliency labels from the first listed window only (after that draw).

    Randomness: one table of uniform draws per epoch from ``np.random.default_rng([seed, epoch])``,
    row ``index`` for item ``index``: deterministic for a seed, independent of the number of workers
    and of the batch order, and cheap per item. Call :meth:`set_epoch` before every epoch.
    """

    N_DRAWS = 8  # version, 3 for the time mask, 2 positives, 2 negatives

    def __init__(
        self,
        data: SplitData,
        train: bool,
        seed: int = 0,
        max_a_l: int = 300,
        max_windows: int = 5,
        clip_len: float = 1.0,
        time_mask: TimeMaskConfig | None = None,
        caption_tags: Sequence[str] = (),
        with_labels: bool = True,
    ) -> None:
        self.data = data
        self.train = train
        self.seed = seed
        self.max_a_l = max_a_l
        self.max_windows = max_windows
        self.clip_len = clip_len
        self.time_mask = time_mask if train else None  # never at val/test
        self.versions: list[str | None] = [None, *caption_tags] if train else [None]
        unknown = set(caption_tags) - set(data.tags)
        if unknown:
            raise ValueError(f"caption versions {sorted(unknown)} were not loaded for this split")
        self.with_labels = with_labels
        self.epoch = 0
        self._draws: np.ndarray | None = None
        self._tef: dict[int, np.ndarray] = {}
        self._draws_epoch = -1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _time_features(self, n: int) -> np.ndarray:
        """:func:`time_features`, computed once per length."""
        tef = self._tef.get(n)
        if tef is None:
            tef = self._tef[n] = time_features(n)
        return tef

    def draws(self, index: int) -> np.ndarray:
        if self._draws is None or self._draws_epoch != self.epoch:
            rng = np.random.default_rng([self.seed, self.epoch])
            self._draws = rng.random((len(self), self.N_DRAWS))
            self._draws_epoch = self.epoch
        return self._draws[index]

    def __len__(self) -> int:
        return len(self.data.queries)

    def text_key(self, q: Query, version: str | None) -> str:
        """Packed-store key of a caption version; a version dropped as identical to the original
        caption is served by the original."""
        if version is None:
            return q.qid
        key = f"{version}/{q.qid}"
        return self.data.alias.get(key, key)

    def __getitem__(self, index: int) -> dict[str, Any]:
        q = self.data.queries[index]
        u = self.draws(index).tolist() if self.train else [0.5] * self.N_DRAWS
        version = self.versions[int(u[0] * len(self.versions))]
        txt = np.array(self.data.text[self.text_key(q, version)], dtype=np.float32)
        frames = self.data.audio[q.vid][: self.max_a_l]
        n = len(frames)
        aud = np.empty((n, frames.shape[1] + 2), dtype=np.float32)
        aud[:, :-2] = frames
        aud[:, -2:] = self._time_features(n)
        masked = None
        if self.time_mask is not None:
            masked = time_mask_span(n, self.time_mask, u[1:4])
            if masked is not None:
                aud[masked[0] : masked[0] + masked[1], :-2] = 0.0
        item: dict[str, Any] = {
            "index": index,
            "qid": q.qid,
            "query": q.query,
            "vid": q.vid,
            "duration": q.duration,
            "txt": txt,
            "aud": aud,
            "version": version,
            "masked": masked,
        }
        if self.with_labels and q.windows is not None:
            item.update(self._labels(q.windows, n, u[4:8], index))
        return item

    def _labels(self, windows: list[list[float]], n: int, u: Sequence[float], index: int) -> dict[str, Any]:
        w = windows
        if self.train and len(w) > self.max_windows:  # rare: draw a random order of all windows
            order = np.random.default_rng([self.seed, self.epoch, index]).permutation(len(w))
            w = [w[i] for i in order]
        kept = np.asarray(w[: self.max_windows], dtype=np.float32) / np.float32(n * self.clip_len)
        spans = np.empty_like(kept)
        spans[:, 0] = (kept[:, 0] + kept[:, 1]) * 0.5  # (center, width), unclamped
        spans[:, 1] = kept[:, 1] - kept[:, 0]
        st, ed = w[0]
        gs = int(st / self.clip_len)
        ge = max(0, min(int(ed / self.clip_len), n) - 1)
        gs = min(gs, ge)
        pos = _two_distinct(gs, ge - gs + 1, u[0], u[1]) if gs != ge else [gs, gs]
        n_pool = gs + (n - ge - 1)  # frames before gs and after ge
        if n_pool >= 2:
            neg = [i if i < gs else i + (ge - gs + 1) for i in _two_distinct(0, n_pool, u[2], u[3])]
        else:
            neg = list(pos)
        sal = np.zeros(n, dtype=np.float32)
        sal[gs : ge + 1] = 1.0
        return {"spans": spans, "sal_pos": pos, "sal_neg": neg, "sal_all": sal}


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Zero-pad to the batch maximum; float masks (1 = valid); official target format."""
    b = len(items)
    la = max(len(it["aud"]) for it in items)
    lt = max(len(it["txt"]) for it in items)
    aud = torch.zeros(b, la, items[0]["aud"].shape[1])
    txt = torch.zeros(b, lt, items[0]["txt"].shape[1])
    am = torch.zeros(b, la)
    tm = torch.zeros(b, lt)
    for i, it in enumerate(items):
        n, m = len(it["aud"]), len(it["txt"])
        aud[i, :n] = torch.from_numpy(it["aud"])
        txt[i, :m] = torch.from_numpy(it["txt"])
        am[i, :n] = 1
        tm[i, :m] = 1
    batch: dict[str, Any] = {
        "inputs": {"src_txt": txt, "src_txt_mask": tm, "src_aud": aud, "src_aud_mask": am},
        "meta": [{k: it[k] for k in ("qid", "query", "vid", "duration", "version", "masked")} for it in items],
        "index": torch.tensor([it["index"] for it in items], dtype=torch.long),
        "duration": torch.tensor([float(it["duration"]) for it in items], dtype=torch.float64),
    }
    if "spans" in items[0]:
        sal = torch.zeros(b, la)
        for i, it in enumerate(items):
            sal[i, : len(it["sal_all"])] = torch.from_numpy(it["sal_all"])
        batch["targets"] = {
            "span_labels": [{"spans": torch.from_numpy(it["spans"])} for it in items],
            "saliency_pos_labels": torch.tensor([it["sal_pos"] for it in items], dtype=torch.long),
            "saliency_neg_labels": torch.tensor([it["sal_neg"] for it in items], dtype=torch.long),
            "saliency_all_labels": sal,
        }
    return batch
