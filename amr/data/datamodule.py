"""LightningDataModule over one dataset root in the official layout."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Sampler

from amr.augment.time_mask import TimeMaskConfig
from amr.data.dataset import MomentDataset, SplitData, collate
from amr.data.device_batches import DeviceArrays, DeviceLoader
from amr.data.features import Encoder, Layout
from amr.data.synth import derive_features, generate, has_features
from amr.errors import InputError

log = logging.getLogger(__name__)


class EpochSampler(Sampler[int]):
    """Shuffles with ``seed + epoch`` and tells the dataset the epoch (caption versions, time mask
    and window draws change every epoch). Lightning calls ``set_epoch`` before each epoch: the one
    way the epoch reaches the datasets."""

    def __init__(self, dataset: MomentDataset, seed: int, shuffle: bool = True) -> None:
        self.dataset = dataset
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self):  # type: ignore[override]
        if not self.shuffle:
            return iter(range(len(self.dataset)))
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(len(self.dataset), generator=g).tolist())


def ensure_dataset(data_cfg: Any, encoder: Encoder | None = None) -> Layout:
    """The dataset's layout for ``encoder``'s features (default MS-CLAP 2023); a synthetic dataset
    is generated first when its own root (``synthetic.root``, which ``root`` follows by default)
    holds none, and gets the encoder's feature set when it lacks it. Any other root must hold a
    dataset: a mistyped ``data.root`` is an error, never a new synthetic set."""
    layout = Layout(Path(data_cfg.root), data_cfg.name, data_cfg.feat_dir, encoder or Encoder())
    synth = data_cfg.get("synthetic")
    if synth is None:
        return layout
    own_root = Path(synth.root).resolve() == layout.root.resolve()
    if not layout.annotations(data_cfg.splits.test).is_file():
        if not own_root:
            raise InputError(
                f"no {data_cfg.name} dataset here (no {layout.annotations(data_cfg.splits.test).name}); "
                f"a synthetic set is generated only at its own root, data.synthetic.root={synth.root}",
                layout.root,
            )
        generate(layout.root, preset=synth.preset, seed=synth.seed, scale=synth.scale)
    if own_root and not has_features(layout):
        derive_features(layout, synth.seed)
    return layout


class MomentDataModule(pl.LightningDataModule):
    def __init__(
        self,
        data_cfg: Any,
        batch_size: int,
        eval_batch_size: int,
        cache_dir: str,
        seed: int,
        num_workers: int = 0,
        time_mask: TimeMaskConfig | None = None,
        pivots: Sequence[str] = (),
        on_device: bool = False,
        fixed_shapes: bool = False,
        encoder: Encoder | None = None,
    ) -> None:
        super().__init__()
        self.cfg = data_cfg
        self.encoder = encoder or Encoder()  # whose features are read (folders, widths)
        # GT length bucket edges for per-length val/test metrics (none: the official ones alone)
        self.length_bucket_edges: list[float] = list(data_cfg.get("length_buckets") or [])
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.cache_dir = cache_dir
        self.seed = seed
        self.num_workers = num_workers
        self.time_mask = time_mask
        self.pivots = list(pivots)
        self.splits: dict[str, MomentDataset] = {}
        self.on_device = on_device  # batches built on the training device (device_batches.py)
        self._device_arrays: dict[str, tuple[DeviceArrays, DeviceArrays]] = {}
        self.fixed_shapes = fixed_shapes  # every batch of a split in one shape (MomentDataset.fixed_shape)

    def share_device_arrays(self, other: MomentDataModule) -> None:
        """Use ``other``'s device copies of the packs (the same dataset: stacked runs hold one)."""
        self._device_arrays = other._device_arrays

    def _shape(self, role: str) -> tuple[int, int] | None:
        return self.splits[role].fixed_shape() if self.fixed_shapes else None

    def load(self) -> None:
        """Validate and open every split (annotations, feature files, packs); idempotent."""
        if self.splits:
            return
        layout = ensure_dataset(self.cfg, self.encoder)
        common = {"max_a_l": self.cfg.max_a_l, "max_windows": self.cfg.max_windows, "clip_len": self.cfg.clip_len}
        for role, split in (
            ("train", self.cfg.splits.train),
            ("val", self.cfg.splits.val),
            ("test", self.cfg.splits.test),
        ):
            train = role == "train"
            data = SplitData.load(
                layout,
                split,
                self.cache_dir,
                dtype=self.cfg.dtype,
                pivots=self.pivots if train else (),
                overlong=self.cfg.overlong,
                verify=self.cfg.get("verify", False),
            )
            self.splits[role] = MomentDataset(
                data,
                train=train,
                seed=self.seed,
                time_mask=self.time_mask,
                pivots=self.pivots if train else (),
                **common,
            )

    def setup(self, stage: str | None = None) -> None:
        self.load()

    def _device_loader(self, role: str, batch_size: int) -> DeviceLoader:
        trainer = self.trainer
        device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
        if trainer is not None and trainer.world_size > 1:
            raise ValueError("batches_on_device=true trains in one process; use it with one device")
        ds = self.splits[role]
        if role not in self._device_arrays:  # copied once, kept for later stages and tests
            arrays = self._device_arrays[role] = (
                DeviceArrays(ds.data.audio, device),
                DeviceArrays(ds.data.text, device),
            )
            size = sum(a.data.numel() * a.data.element_size() for a in arrays) / 2**20
            log.info("%s batches built on %s (%.1f MB of features held there)", role, device, size)
        audio, text = self._device_arrays[role]
        sampler = EpochSampler(ds, self.seed, shuffle=role == "train")
        return DeviceLoader(ds, batch_size, sampler, audio, text, self._shape(role))

    def _loader(self, role: str, batch_size: int) -> DataLoader | DeviceLoader:
        if self.on_device:
            return self._device_loader(role, batch_size)
        ds = self.splits[role]
        return DataLoader(
            ds,
            batch_size=batch_size,
            sampler=EpochSampler(ds, self.seed, shuffle=role == "train"),
            collate_fn=partial(collate, shape=self._shape(role)),
            num_workers=self.num_workers,
            drop_last=False,
            generator=torch.Generator().manual_seed(self.seed),
        )  # keeps the global RNG untouched

    def train_dataloader(self) -> DataLoader | DeviceLoader:
        return self._loader("train", self.batch_size)

    def val_dataloader(self) -> DataLoader | DeviceLoader:
        return self._loader("val", self.eval_batch_size)

    def test_dataloader(self) -> DataLoader | DeviceLoader:
        return self._loader("test", self.eval_batch_size)

    def ground_truth(self, role: str) -> tuple[list[str], list[list[list[float]]]]:
        queries = self.splits[role].data.queries
        return [q.qid for q in queries], [q.windows or [] for q in queries]
