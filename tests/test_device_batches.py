"""Batches built on the device (``batches_on_device=true``) equal the DataLoader's for a seed and
epoch: caption versions, time masks, truncation, window draws, padding, saliency labels; and a
training run gives the same metrics either way."""

from __future__ import annotations

import json
from functools import partial
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader

from amr.augment.caption_versions import PIVOTS
from amr.augment.time_mask import TimeMaskConfig
from amr.data.datamodule import EpochSampler
from amr.data.dataset import MomentDataset, SplitData, collate
from amr.data.device_batches import DeviceArrays, DeviceLoader
from amr.data.synth import generate


def _same(a: Any, b: Any, where: str = "batch") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b.to(a.device)), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.fixture(scope="module")
def castella(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("synth"), "castella", seed=5, scale=0.05)


@pytest.mark.parametrize(("train", "fixed"), [(True, False), (False, False), (True, True)])
def test_device_batches_equal_the_dataloaders(castella, tmp_path, train: bool, fixed: bool) -> None:
    data = SplitData.load(castella, "train", tmp_path / "cache", dtype="float16", pivots=PIVOTS if train else ())
    ds = MomentDataset(
        data,
        train=train,
        seed=4,
        max_a_l=100,  # recordings of 60-300 frames: truncation included
        max_windows=2,  # queries with more windows: the per-epoch window draw included
        time_mask=TimeMaskConfig(p=0.5, max_ratio=0.2),
        pivots=PIVOTS if train else (),
    )
    cpu = torch.device("cpu")
    shape = ds.fixed_shape() if fixed else None
    collate_fn = partial(collate, shape=shape)
    ref = DataLoader(ds, batch_size=7, sampler=EpochSampler(ds, 4, shuffle=train), collate_fn=collate_fn)
    dev = DeviceLoader(
        ds, 7, EpochSampler(ds, 4, shuffle=train), DeviceArrays(data.audio, cpu), DeviceArrays(data.text, cpu), shape
    )
    if fixed:  # the split's longest recording (cut at max_a_l) and its longest caption version
        longest = max(len(data.audio[q.vid]) for q in data.queries)
        assert shape == (min(longest, 100), max(len(data.text[k]) for k in data.text.index))
    assert len(dev) == len(ref)
    seen = {"pivot": 0, "masked": 0, "truncated": 0}
    for epoch in (0, 3):
        ref.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
        dev.sampler.set_epoch(epoch)
        for a, b in zip(ref, dev, strict=True):
            _same(a, b, f"epoch {epoch}")
            if fixed:  # every batch in the one shape, padding zero and masked out
                assert tuple(a["inputs"]["src_aud"].shape[1:]) == (shape[0], 770)  # type: ignore[index]
                assert a["inputs"]["src_txt"].shape[1] == shape[1]  # type: ignore[index]
                assert a["targets"]["saliency_all_labels"].shape[1] == shape[0]  # type: ignore[index]
            seen["pivot"] += sum(m["pivot"] is not None for m in a["meta"])
            seen["masked"] += sum(m["masked"] is not None for m in a["meta"])
            seen["truncated"] += int(a["inputs"]["src_aud"].shape[1] == 100)
    if train:  # the test covers what it claims
        assert min(seen.values()) > 0, seen


def test_a_run_with_batches_on_device_trains_the_same(tmp_path) -> None:
    from tests.helpers import run_python

    common = ["-m", "amr.training.run", "debug=fast", "pretrain=none", "augment=seed_report", f"paths.root={tmp_path}"]
    metrics = []
    for flag in ("false", "true"):
        run = tmp_path / f"run_{flag}"
        run_python([*common, f"batches_on_device={flag}", f"hydra.run.dir={run}"], tmp_path)
        metrics.append(json.loads((run / "test_metrics.json").read_text()))
    assert metrics[0] == metrics[1]
    assert "train batches built on cpu" in (tmp_path / "run_true" / "train.log").read_text()
    assert "batches built on" not in (tmp_path / "run_false" / "train.log").read_text()
