from __future__ import annotations

import os
import socket

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from amr.metrics.retrieval import evaluate
from amr.metrics.torchmetric import MomentRetrievalMetric
from benchmarks.bench_eval import make_queries


def _data(n: int = 60) -> tuple[list[str], list, torch.Tensor]:
    preds, gts = make_queries(n, seed=3)
    qids = list(preds)
    rows = torch.tensor([preds[q] for q in qids], dtype=torch.float64)
    return qids, [gts[q] for q in qids], rows


def _expected(qids: list[str], gts: list, rows: torch.Tensor) -> dict:
    preds = {q: rows[i].numpy() for i, q in enumerate(qids)}
    return evaluate(preds, {q: np.asarray(g) for q, g in zip(qids, gts, strict=True)})


def test_metric_accumulates_batches_like_one_evaluation() -> None:
    qids, gts, rows = _data()
    metric = MomentRetrievalMetric(qids, gts)
    for start in range(0, len(qids), 16):
        idx = torch.arange(start, min(start + 16, len(qids)))
        metric.update(idx, rows[idx])
    metric.update(torch.tensor([0]), rows[[0]])  # a repeated index (sampler padding) counts once
    expected = evaluate(
        {q: rows[i].numpy() for i, q in enumerate(qids)}, {q: np.asarray(g) for q, g in zip(qids, gts, strict=True)}
    )
    assert metric.compute() == expected


def _worker(rank: int, port: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    qids, gts, rows = _data()
    metric = MomentRetrievalMetric(qids, gts)
    # a distributed sampler's split: every other index, the shorter rank padded with a repeat
    idx = torch.arange(rank, len(qids), 2)
    if len(idx) < (len(qids) + 1) // 2:
        idx = torch.cat([idx, idx[:1]])
    for chunk in idx.split(7):
        metric.update(chunk, rows[chunk])
    out[rank] = metric.compute()
    dist.destroy_process_group()


def test_metric_is_the_same_across_two_gloo_processes() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_worker, args=(port, out), nprocs=2, join=True)
    qids, gts, rows = _data()
    expected = evaluate(
        {q: rows[i].numpy() for i, q in enumerate(qids)}, {q: np.asarray(g) for q, g in zip(qids, gts, strict=True)}
    )
    assert out[0] == out[1] == expected
