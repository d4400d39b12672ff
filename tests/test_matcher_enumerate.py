"""The on-device exact matcher (``loss.matcher=enumerate``) against scipy's ``linear_sum_assignment``:
the same optimal cost on random and adversarial cost matrices (ties, 0-5 windows, padding), the same
losses where ties make the assignments differ, scipy for samples with more windows than it covers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from amr.model.criterion import build_criterion
from amr.model.matcher import HungarianMatcher, exact_assignment, injective_assignments


def _scipy_cost(c: np.ndarray) -> float:
    rows, cols = linear_sum_assignment(c)
    return float(c[rows, cols].sum())


def _costs(rng: np.random.Generator, kind: str, b: int, nq: int = 10, k: int = 5) -> np.ndarray:
    if kind == "random":
        return rng.normal(size=(b, nq, k)).astype(np.float32)
    if kind == "integer ties":
        return rng.integers(0, 3, size=(b, nq, k)).astype(np.float32)
    if kind == "all equal":
        return np.full((b, nq, k), 0.25, dtype=np.float32)
    if kind == "duplicated rows and columns":
        c = rng.normal(size=(b, nq, k)).astype(np.float32)
        c[:, 1] = c[:, 0]
        c[:, :, 2] = c[:, :, 1]
        return c
    if kind == "large offsets, small gaps":
        return (1e6 + rng.normal(size=(b, nq, k)) * 1e-2).astype(np.float32)
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind", ["random", "integer ties", "all equal", "duplicated rows and columns", "large offsets, small gaps"]
)
def test_enumeration_reaches_scipys_optimal_cost(kind: str) -> None:
    rng = np.random.default_rng(7)
    cost = _costs(rng, kind, 200)
    sizes = rng.integers(0, 6, 200)
    sizes[:6] = np.arange(6)  # every window count, padding included
    valid = np.arange(5) < sizes[:, None]
    rows = exact_assignment(torch.from_numpy(cost), torch.from_numpy(valid)).numpy()
    for i, n in enumerate(sizes):
        c = cost[i, :, :n].astype(np.float64)
        assert len(set(rows[i, :n])) == n  # injective
        got = float(c[rows[i, :n], np.arange(n)].sum())
        assert got == pytest.approx(_scipy_cost(c), rel=1e-12, abs=1e-9), (kind, i, n)


def test_the_table_holds_every_injective_assignment_once() -> None:
    table = injective_assignments(10, 5)
    assert table.shape == (30_240, 5)
    assert len({tuple(r) for r in table.tolist()}) == 30_240
    assert all(len(set(r)) == 5 for r in table[::997].tolist())


def _batch(rng: np.random.Generator, b: int, sizes: list[int], duplicate: bool) -> tuple[dict, dict]:
    logits = torch.from_numpy(rng.normal(size=(b, 10, 2)).astype(np.float32))
    spans = torch.from_numpy(rng.uniform(0.1, 0.6, size=(b, 10, 2)).astype(np.float32))
    gts = [torch.from_numpy(rng.uniform(0.1, 0.6, size=(n, 2)).astype(np.float32)) for n in sizes]
    if duplicate:  # identical queries and identical GT windows: tied assignments
        logits[:, 3] = logits[:, 2]
        spans[:, 3] = spans[:, 2]
        gts = [torch.cat([g[:1], g[:1], g[2:]]) if len(g) >= 2 else g for g in gts]
    return {"pred_logits": logits, "pred_spans": spans}, {"span_labels": [{"spans": g} for g in gts]}


@pytest.mark.parametrize("duplicate", [False, True])
@pytest.mark.parametrize("cls", ["ce", "varifocal"])
def test_losses_are_the_same_with_either_solver(duplicate: bool, cls: str) -> None:
    """Pairs come in another order and ties may pair other (identical) queries or windows: the loss
    terms the assignment feeds are the same."""
    rng = np.random.default_rng(3)
    sizes = [0, 1, 2, 3, 4, 5, 5, 2]
    outputs, targets = _batch(rng, len(sizes), sizes, duplicate)
    crit = {s: build_criterion(cls=cls, matcher=s) for s in ("scipy", "enumerate")}
    terms = {}
    for s, c in crit.items():
        idx = c.matcher(outputs, targets)
        terms[s] = {**c.loss_spans(outputs, targets, idx), **c.loss_labels(outputs, targets, idx)}
    for key in ("loss_span", "loss_giou", "loss_label", "class_error"):
        torch.testing.assert_close(terms["enumerate"][key], terms["scipy"][key], rtol=1e-6, atol=1e-6)


def test_samples_with_more_windows_than_enumerated_go_to_scipy() -> None:
    rng = np.random.default_rng(4)
    outputs, targets = _batch(rng, 3, [2, 7, 0], duplicate=False)
    ref = HungarianMatcher()(outputs, targets)
    got = HungarianMatcher(solver="enumerate")(outputs, targets)
    assert [(r.tolist(), c.tolist()) for r, c in got] == [(r.tolist(), c.tolist()) for r, c in ref]
    with pytest.raises(ValueError, match="matcher solver must be one of scipy, enumerate"):
        HungarianMatcher(solver="greedy")
