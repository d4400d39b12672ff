"""Batches built on the device (``batches_on_device=true``): a split's packed features are copied to
the device once, and each batch is gathered, padded, time-masked and given its time features and
saliency labels there. The host only plans the items (:meth:`MomentDataset.plan`: the same per-epoch
draws as the CPU path) and uploads a few small index tensors per batch; nothing is copied back, and
no worker process is needed. The batches equal :func:`collate`'s (tested), tensors on the device.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from amr.data.dataset import ItemPlan, MomentDataset, item_meta
from amr.data.packed_store import PackedArrays


class DeviceArrays:
    """A pack's rows on ``device`` (in the pack's dtype), its offsets on the host."""

    def __init__(self, pack: PackedArrays, device: torch.device) -> None:
        with warnings.catch_warnings():  # the memory map is read-only; it is only read (or copied)
            warnings.simplefilter("ignore", UserWarning)
            self.data = torch.from_numpy(pack.data).to(device)
        self.offsets = pack.offsets
        self.index = pack.index
        self.device = device

    def span(self, key: str) -> tuple[int, int]:
        """(first row, number of rows) of ``key``."""
        i = self.index[key]
        return int(self.offsets[i]), int(self.offsets[i + 1] - self.offsets[i])


def _gather(rows: DeviceArrays, first: Tensor, count: Tensor, width: int) -> tuple[Tensor, Tensor]:
    """(B, width, D) float32 rows ``first .. first + count`` of each sample, zero after ``count``;
    and the (B, width) validity mask."""
    steps = torch.arange(width, device=rows.device)
    valid = steps[None] < count[:, None]
    at = (first[:, None] + steps[None]).clamp(max=max(len(rows.data) - 1, 0))
    return rows.data[at].float().masked_fill(~valid[..., None], 0.0), valid


def _targets(plans: Sequence[ItemPlan], steps: Tensor, device: torch.device) -> dict[str, Any]:
    labels = [p.labels for p in plans]
    assert all(lab is not None for lab in labels)
    spans = [lab["spans"] for lab in labels if lab is not None]
    on_device = torch.from_numpy(np.concatenate(spans)).to(device, non_blocking=True)
    firsts = [np.flatnonzero(lab["sal_all"]) for lab in labels if lab is not None]
    bounds = torch.tensor([[f[0], f[-1]] for f in firsts], dtype=torch.int64).to(device, non_blocking=True)
    pos_neg = torch.tensor([[lab["sal_pos"], lab["sal_neg"]] for lab in labels if lab is not None])
    pos_neg = pos_neg.to(device, non_blocking=True)
    sal = (steps[None] >= bounds[:, :1]) & (steps[None] <= bounds[:, 1:])
    return {
        "span_labels": [{"spans": s} for s in torch.split(on_device, [len(s) for s in spans])],
        "saliency_pos_labels": pos_neg[:, 0],
        "saliency_neg_labels": pos_neg[:, 1],
        "saliency_all_labels": sal.float(),
    }


def build_batch(
    plans: Sequence[ItemPlan], audio: DeviceArrays, text: DeviceArrays, shape: tuple[int, int] | None = None
) -> dict[str, Any]:
    """The batch :func:`collate` makes of these items (padded to ``shape`` when given), built on
    the arrays' device."""
    device = audio.device
    a = [audio.span(p.query.vid) for p in plans]
    t = [text.span(p.text) for p in plans]
    no_mask = (0, 0)
    host = torch.tensor(
        [[x[0] for x in a], [p.n for p in plans], [x[0] for x in t], [x[1] for x in t],
         [(p.masked or no_mask)[0] for p in plans], [(p.masked or no_mask)[1] for p in plans]],
        dtype=torch.int64,
    )  # fmt: skip
    first, n, t_first, t_len, m_start, m_len = host.to(device, non_blocking=True)
    la, lt = shape or (max(p.n for p in plans), max(x[1] for x in t))
    feats, valid = _gather(audio, first, n, la)
    steps = torch.arange(la, device=device)
    masked = (steps[None] >= m_start[:, None]) & (steps[None] < (m_start + m_len)[:, None])
    feats = feats.masked_fill(masked[..., None], 0.0)
    start = steps.float()[None] / n.float()[:, None]  # the official time features, in float32
    step = (1.0 / n.double()).float()[:, None]
    tef = torch.stack([start, start + step], -1).masked_fill(~valid[..., None], 0.0)
    txt, txt_valid = _gather(text, t_first, t_len, lt)
    batch: dict[str, Any] = {
        "inputs": {
            "src_txt": txt,
            "src_txt_mask": txt_valid.float(),
            "src_aud": torch.cat([feats, tef], -1),
            "src_aud_mask": valid.float(),
        },
        "meta": [item_meta(p.query, p.pivot, p.masked) for p in plans],
        "index": torch.tensor([p.index for p in plans], dtype=torch.long),
        "duration": torch.tensor([float(p.query.duration) for p in plans], dtype=torch.float64),
    }
    if plans[0].labels is not None:
        batch["targets"] = _targets(plans, steps, device)
    return batch


class DeviceLoader:
    """Iterates a dataset's batches built on ``device``, in the order of ``sampler`` (an
    ``EpochSampler``: Lightning sets its epoch, as for a DataLoader's)."""

    def __init__(
        self,
        ds: MomentDataset,
        batch_size: int,
        sampler: Any,
        audio: DeviceArrays,
        text: DeviceArrays,
        shape: tuple[int, int] | None = None,
    ) -> None:
        self.dataset, self.batch_size, self.sampler = ds, batch_size, sampler
        self.audio, self.text, self.shape = audio, text, shape
        self.batch_sampler = None  # read by Lightning (as a DataLoader's: the order is the sampler's)

    def __len__(self) -> int:
        return -(-len(self.dataset) // self.batch_size)

    def __iter__(self):  # type: ignore[no-untyped-def]
        order = list(iter(self.sampler))
        for i in range(0, len(order), self.batch_size):
            plans = [self.dataset.plan(j) for j in order[i : i + self.batch_size]]
            yield build_batch(plans, self.audio, self.text, self.shape)
