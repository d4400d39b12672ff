"""Decoding moments from the per-frame saliency: the segmentation posterior (exact, against brute
force) and the adaptive-threshold segments (planted segments recovered)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from amr.inference.decoders import forward_backward, span_posterior, threshold_segments


def _segmentations(t: int, max_len: int, start: int = 0):
    """Every segmentation of frames [start, t): lists of segments [a, b) (other frames background)."""
    if start == t:
        yield []
        return
    yield from _segmentations(t, max_len, start + 1)  # frame `start` is background
    for length in range(1, min(max_len, t - start) + 1):
        for rest in _segmentations(t, max_len, start + length):
            yield [(start, start + length), *rest]


@pytest.mark.parametrize(("t", "max_len", "penalty"), [(1, 1, 0.0), (4, 2, -0.5), (6, 3, 0.3), (7, 7, -1.0)])
def test_segmental_posterior_equals_brute_force(t: int, max_len: int, penalty: float) -> None:
    rng = np.random.default_rng(t * 10 + max_len)
    scores = rng.normal(0, 1.5, t)
    weights = {}
    for seg in _segmentations(t, max_len):
        weights[tuple(seg)] = math.exp(sum(scores[a:b].sum() + penalty for a, b in seg))
    z = sum(weights.values())
    _, _, log_z = forward_backward(scores, max_len, penalty)
    assert log_z == pytest.approx(math.log(z), rel=1e-12)
    spans = np.array([(a, b) for a, b in itertools.combinations(range(t + 1), 2)])
    expected = [sum(w for seg, w in weights.items() if (a, b) in seg) / z for a, b in spans]
    np.testing.assert_allclose(span_posterior(scores, spans, max_len, penalty), expected, rtol=1e-10, atol=1e-15)


def test_segmental_posterior_is_stable_on_long_recordings() -> None:
    scores = np.full(300, -4.0)
    scores[100:104] = 6.0  # a strong 4-frame event in 5 minutes
    spans = np.array([[100, 104], [99, 104], [100, 103], [0, 4]])
    # a per-segment penalty makes one segment likelier than the same frames split into several
    post = span_posterior(scores, spans, max_len=60, penalty=-4.0)
    assert np.all(np.isfinite(post)) and post[0] > 0.9 and post[1:].max() < 0.05
    free = span_posterior(scores, spans, max_len=60, penalty=0.0)  # splitting costs nothing
    assert free[0] < 0.5


def test_threshold_segments_recover_planted_events() -> None:
    rng = np.random.default_rng(0)
    curve = rng.normal(-2.0, 0.3, 240)
    planted = [(10, 13), (50, 52), (120, 160), (238, 240)]  # short, shortest, long, at the end
    for a, b in planted:
        curve[a:b] = rng.normal(2.0, 0.3, b - a)
    np.testing.assert_array_equal(threshold_segments(curve, k=0.5), planted)
    assert threshold_segments(curve, k=0.5, min_len=3).tolist() == [[10, 13], [120, 160]]
    assert threshold_segments(np.zeros(0)).shape == (0, 2)


def _planted(t: int = 120) -> tuple[np.ndarray, list[tuple[int, int]]]:
    rng = np.random.default_rng(3)
    curve = rng.normal(-3.0, 0.3, t)
    planted = [(20, 23), (70, 90)]
    for a, b in planted:
        curve[a:b] = rng.normal(3.0, 0.3, b - a)
    return curve, planted


def test_decoders_on_one_sample() -> None:
    from amr.inference.decoders import DecodeConfig, decode_sample

    curve, planted = _planted()
    detr = [[60.0, 100.0, 0.9], [20.0, 23.0, 0.5], [0.0, 10.0, 0.4]]  # seconds; T = 120 frames = 120 s
    assert decode_sample(detr, curve, 120.0, DecodeConfig("detr")) == detr
    sal = decode_sample(detr, curve, 120.0, DecodeConfig("saliency"))
    assert sorted(tuple(r[:2]) for r in sal) == [(20.0, 23.0), (70.0, 90.0)]
    seg = decode_sample(detr, curve, 120.0, DecodeConfig("segmental", penalty=-4.0))
    assert {tuple(seg[0][:2]), tuple(seg[1][:2])} == {(20.0, 23.0), (70.0, 90.0)}  # the events rank first
    assert len({tuple(r[:2]) for r in seg}) == len(seg) == 4  # 3 DETR windows + the one new segment
    assert min(seg[0][2], seg[1][2]) > 0.1 and seg[-1][2] < 0.01
    # the posterior does not see the saliency's offset or scale (ranking losses fix neither)
    assert decode_sample(detr, 3.0 * curve - 7.0, 120.0, DecodeConfig("segmental")) == seg
    hyb = decode_sample(detr, curve, 120.0, DecodeConfig("hybrid", penalty=-4.0, detr_weight=0.2))
    assert [r[:2] for r in hyb][0] == [20.0, 23.0] and len(hyb) == 3  # DETR's windows, re-scored
    only = decode_sample(detr, curve, 120.0, DecodeConfig("hybrid", detr_weight=1.0))
    assert only == [[r[0], r[1], r[2]] for r in detr]


def test_every_decoder_and_class_loss_compose_in_a_fast_sweep(tmp_path) -> None:
    import json
    import os
    import subprocess
    import sys

    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "amr.training.run", "-m", "experiment=castella_only", "debug=fast"]
    cmd += ["decode=detr,saliency,segmental,hybrid", "loss.cls=varifocal"]
    cmd += [f"paths.root={tmp_path}", f"hydra.sweep.dir={sweep}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, WANDB_MODE="disabled"), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/test_metrics.json"))]
    assert len(metrics) == 4 and all("MR-full-mAP" in m["brief"] for m in metrics)
    lines = [ln for p in sorted(sweep.glob("*/predictions/test_preds.jsonl")) for ln in p.read_text().splitlines()]
    assert all(1 <= len(json.loads(ln)["pred_relevant_windows"]) <= 10 for ln in lines)


def test_a_curve_without_segments_keeps_detr_rows() -> None:
    from amr.inference.decoders import DecodeConfig, decode_batch

    detr = [[0.0, 4.0, 0.7], [5.0, 9.0, 0.2]]
    halves = np.r_[np.zeros(5), np.ones(5)]  # mean + 1.5 std = 1.25: no frame above
    got = decode_batch([detr, detr], [halves, np.zeros(0)], [10.0, 10.0], DecodeConfig("saliency", threshold_k=1.5))
    assert got == [detr, detr]
