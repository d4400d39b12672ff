"""Training/evaluation items and batches, exactly as the official ``StartEndDataset`` makes them,
read from the packed store, with the two augmentations of ``amr.augment`` (caption versions,
time mask) applied to training items."""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from amr.augment.caption_versions import choose_version, resolve_versions, text_key, version_choices
from amr.augment.time_mask import TimeMaskConfig, apply_time_mask, time_mask_span
from amr.data.annotations import OverlongPolicy, Query, load_annotations
from amr.data.features import AUDIO_KEY, TEXT_KEY, Layout
from amr.data.packed_store import PackedArrays, open_or_build

log = logging.getLogger(__name__)


def time_features(n: int) -> np.ndarray:
    """(n, 2) official time features [i/n, i/n + 1/n] appended to the audio frames."""
    st = np.arange(n, dtype=np.float32) / n
    return np.stack([st, st + 1.0 / n], 1)


@functools.lru_cache(maxsize=512)
def _time_features(n: int) -> np.ndarray:
    """:func:`time_features`, computed once per length (read-only: shared between items)."""
    tef = time_features(n)
    tef.flags.writeable = False
    return tef


def _two_distinct(lo: int, n: int, u1: float, u2: float) -> list[int]:
    """Two distinct integers drawn uniformly from lo..lo+n-1 (n >= 2)."""
    a = int(u1 * n)
    b = int(u2 * (n - 1))
    return [lo + a, lo + (b + 1 if b >= a else b)]


@dataclass
class SplitData:
    """One split's annotations and its packed features (audio by vid, text by qid and pivot)."""

    queries: list[Query]
    audio: PackedArrays
    text: PackedArrays
    pivots: list[str] = field(default_factory=list)  # caption versions available besides the original
    alias: dict[str, str] = field(default_factory=dict)  # see caption_versions.resolve_versions

    @classmethod
    def load(
        cls,
        layout: Layout,
        split: str,
        cache_dir: str | Path,
        dtype: str = "float32",
        pivots: Sequence[str] = (),
        require_windows: bool = True,
        overlong: OverlongPolicy = "keep",
        annotations: str | Path | None = None,
        verify: bool = False,
    ) -> SplitData:
        """Validate annotations and feature files, then open (or build) the packs.

        Raises:
            InputError: bad annotation line, missing feature files (count and first ids), missing
                caption versions for a pivot (the pivot and the count missing).
        """
        path = Path(annotations) if annotations else layout.annotations(split)
        queries = load_annotations(path, require_windows=require_windows, overlong=overlong)
        feats = layout.features
        qids = [q.qid for q in queries]
        alias = resolve_versions(qids, pivots, layout.versions_file(split), feats.text_file) if pivots else {}
        vids = sorted({q.vid for q in queries})
        audio = open_or_build(
            Path(cache_dir),
            vids,
            [feats.audio_file(v) for v in vids],
            AUDIO_KEY,
            dtype,
            normalize=True,
            kind="audio",
            verify=verify,
            width=layout.encoder.audio_dim,
        )
        keys = list(qids)
        paths = [feats.text_file(qid) for qid in qids]
        for pivot in pivots:
            own = [qid for qid in qids if f"{pivot}/{qid}" not in alias]
            keys += [f"{pivot}/{qid}" for qid in own]
            paths += [feats.text_file(qid, pivot) for qid in own]
        text = open_or_build(
            Path(cache_dir),
            keys,
            paths,
            TEXT_KEY,
            dtype,
            normalize=False,
            kind="text",
            verify=verify,
            width=layout.encoder.text_dim,
        )
        _warn_long_recordings(queries, audio, feats.audio_dir)
        return cls(queries, audio, text, list(pivots), alias)


def _warn_long_recordings(queries: Sequence[Query], audio: PackedArrays, folder: Path) -> None:
    """Features are one frame per second: many more frames than the annotated duration usually
    means features of another recording or another frame rate (training would use them silently)."""
    long = {q.vid: (len(audio[q.vid]), q.duration) for q in queries if len(audio[q.vid]) > q.duration + 2}
    if long:
        vid, (n, dur) = next(iter(long.items()))
        log.warning(
            "%s: %d recording(s) have more frames than their annotated duration allows at 1 frame/s "
            "(first: %s, %d frames for %s s)",
            folder,
            len(long),
            vid,
            n,
            dur,
        )


# One item's uniform draws in [0, 1) for one epoch: a row of the epoch's draw table, by use.
N_DRAWS = 8
VERSION = 0  # which caption version
TIME_MASK = slice(1, 4)  # coin, length, start
SALIENCY = slice(4, 8)  # two positive frames, two negative frames
EVAL_DRAWS = [0.5] * N_DRAWS  # evaluation draws nothing: fixed mid values


def audio_input(frames: np.ndarray) -> np.ndarray:
    """(T, D) normalised CLAP frames -> (T, D + 2) model input: the official time features appended."""
    n = len(frames)
    aud = np.empty((n, frames.shape[1] + 2), dtype=np.float32)
    aud[:, :-2] = frames
    aud[:, -2:] = _time_features(n)
    return aud


META_KEYS = ("qid", "query", "vid", "duration", "pivot", "masked")  # what a batch keeps of each item as is


def item_meta(q: Query, pivot: str | None = None, masked: Any = None) -> dict[str, Any]:
    """An item's fields a batch keeps as they are (its ``meta``)."""
    return dict(zip(META_KEYS, (q.qid, q.query, q.vid, q.duration, pivot, masked), strict=True))


def make_item(
    index: int, q: Query, txt: np.ndarray, aud: np.ndarray, pivot: str | None = None, masked: Any = None
) -> dict[str, Any]:
    """An unlabelled item as :func:`collate` takes it (labels are added by the dataset)."""
    return {"index": index, **item_meta(q, pivot, masked), "txt": txt, "aud": aud}


@dataclass
class ItemPlan:
    """One item of one epoch without its features: the caption version, the frames, the time mask
    and the labels drawn for it."""

    index: int
    query: Query
    pivot: str | None
    text: str  # key of the caption version in the text pack
    n: int  # audio frames after truncation to max_a_l
    masked: tuple[int, int] | None
    labels: dict[str, Any] | None  # spans, sal_pos, sal_neg, sal_all (None: unlabelled)


class MomentDataset(Dataset):
    """Items in the official format.

    Official semantics kept: audio frames L2-normalised and truncated to ``max_a_l``, 2 time
    features appended; text raw and untruncated; for training, at most ``max_windows`` windows
    drawn at random per epoch, spans normalised by the frame count (the official code does both,
    and de-normalises predictions by the annotated duration), saliency labels from the first listed
    window only (after that draw).

    Randomness: one table of uniform draws per epoch from ``np.random.default_rng([seed, epoch])``,
    row ``index`` for item ``index``: deterministic for a seed, independent of the number of workers
    and of the batch order, and cheap per item. :meth:`set_epoch` is called before every epoch
    (by the data module's sampler).
    """

    def __init__(
        self,
        data: SplitData,
        train: bool,
        seed: int = 0,
        max_a_l: int = 300,
        max_windows: int = 5,
        clip_len: float = 1.0,
        time_mask: TimeMaskConfig | None = None,
        pivots: Sequence[str] = (),
        with_labels: bool = True,
    ) -> None:
        self.data = data
        self.train = train
        self.seed = seed
        self.max_a_l = max_a_l
        self.max_windows = max_windows
        self.clip_len = clip_len
        self.time_mask = time_mask if train else None  # never at val/test
        self.pivots = list(pivots) if train else []
        self.versions = version_choices(self.pivots)
        unknown = set(self.pivots) - set(data.pivots)
        if unknown:
            raise ValueError(f"caption versions {sorted(unknown)} were not loaded for this split")
        self.with_labels = with_labels
        self.epoch = 0
        self._draws: np.ndarray | None = None
        self._draws_epoch = -1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def draws(self, index: int) -> list[float]:
        """Item ``index``'s row of this epoch's draw table (see ``VERSION``, ``TIME_MASK``, ``SALIENCY``)."""
        if not self.train:
            return EVAL_DRAWS
        if self._draws is None or self._draws_epoch != self.epoch:
            rng = np.random.default_rng([self.seed, self.epoch])
            self._draws = rng.random((len(self), N_DRAWS))
            self._draws_epoch = self.epoch
        return self._draws[index].tolist()

    def __len__(self) -> int:
        return len(self.data.queries)

    def fixed_shape(self) -> tuple[int, int]:
        """(audio frames, text tokens) every batch of this split fits: its longest recording (at
        most ``max_a_l``) and its longest caption version. Padding beyond a batch's own maximum
        leaves the network's outputs at valid positions unchanged, official T2V mask included (the
        extra positions are padding in every sample); only dropout draws over a larger tensor."""
        longest = int(np.diff(self.data.audio.offsets).max(initial=1))
        return min(longest, self.max_a_l), int(np.diff(self.data.text.offsets).max(initial=1))

    def plan(self, index: int) -> ItemPlan:
        """Item ``index`` of this epoch without its features: what :meth:`__getitem__` reads and
        draws (the device path builds batches from these)."""
        q = self.data.queries[index]
        u = self.draws(index)
        pivot = choose_version(self.versions, u[VERSION])
        n = min(len(self.data.audio[q.vid]), self.max_a_l)
        masked = time_mask_span(n, self.time_mask, u[TIME_MASK]) if self.time_mask is not None else None
        labels = None
        if self.with_labels and q.windows is not None:
            labels = self._labels(q.windows, n, u[SALIENCY], index)
        return ItemPlan(index, q, pivot, text_key(q.qid, pivot, self.data.alias), n, masked, labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        p = self.plan(index)
        txt = np.array(self.data.text[p.text], dtype=np.float32)
        aud = audio_input(self.data.audio[p.query.vid][: self.max_a_l])
        if p.masked is not None:
            apply_time_mask(aud, p.masked)
        item = make_item(index, p.query, txt, aud, p.pivot, p.masked)
        if p.labels is not None:
            item.update(p.labels)
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


def collate(items: list[dict[str, Any]], shape: tuple[int, int] | None = None) -> dict[str, Any]:
    """Zero-pad to the batch maximum, or to ``shape`` = (audio frames, text tokens) when given (see
    :meth:`MomentDataset.fixed_shape`); float masks (1 = valid); official target format."""
    b = len(items)
    la, lt = shape or (max(len(it["aud"]) for it in items), max(len(it["txt"]) for it in items))
    aud = torch.zeros(b, la, items[0]["aud"].shape[1])
    txt = torch.zeros(b, lt, items[0]["txt"].shape[1])
    aud_mask = torch.zeros(b, la)
    txt_mask = torch.zeros(b, lt)
    for i, it in enumerate(items):
        n, m = len(it["aud"]), len(it["txt"])
        aud[i, :n] = torch.from_numpy(it["aud"])
        txt[i, :m] = torch.from_numpy(it["txt"])
        aud_mask[i, :n] = 1
        txt_mask[i, :m] = 1
    batch: dict[str, Any] = {
        "inputs": {"src_txt": txt, "src_txt_mask": txt_mask, "src_aud": aud, "src_aud_mask": aud_mask},
        "meta": [{k: it[k] for k in META_KEYS} for it in items],
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
