"""Decoding a finished run again and calibrating its scores: the batched segmentation posterior,
the calibrator's file, and the `amr decode` / `amr calibrate` / `Predictor` path on a trained run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from amr.errors import InputError
from amr.inference.calibration import FEATURES, Calibrator, features, fit, hits
from amr.inference.decoders import DecodeConfig, batch_posteriors, span_posterior


def test_batch_posteriors_equal_one_recording_at_a_time() -> None:
    rng = np.random.default_rng(0)
    curves = [rng.normal(0, 2, n) for n in (1, 5, 17, 40, 9)]
    spans = [
        np.array([[0, 1], [0, 2], [-1, 1]]),
        np.array([[0, 5], [1, 3], [4, 5], [3, 3]]),
        np.array([[2, 9], [0, 17], [10, 16]]),
        np.array([[0, 40], [5, 12], [39, 40], [30, 41]]),
        np.zeros((0, 2), dtype=int),
    ]
    got = batch_posteriors(curves, spans, max_len=12, penalty=-1.5)
    for c, s, g in zip(curves, spans, got, strict=True):
        np.testing.assert_allclose(g, span_posterior(c, s, max_len=12, penalty=-1.5), rtol=1e-10, atol=1e-14)
    assert got[0][2] == 0.0 and got[1][3] == 0.0 and got[3][0] == 0.0  # outside, empty, longer than max_len
    assert got[4].shape == (0,)


def _candidates(n: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(FEATURES)))
    y = x[:, 0] + 0.5 * x[:, 5] + rng.normal(0, 0.5, n) > 0.8
    return x, y


@pytest.mark.parametrize("method", ["logistic", "isotonic"])
def test_calibrator_round_trips_through_its_file(method, tmp_path) -> None:
    x, y = _candidates()
    cal = fit(x, y, method, DecodeConfig("hybrid", detr_weight=0.3))
    cal.save(tmp_path / "calibrator.json")
    back = Calibrator.load(tmp_path / "calibrator.json")
    np.testing.assert_array_equal(back.probabilities(x), cal.probabilities(x))
    assert back.decoder() == DecodeConfig("hybrid", detr_weight=0.3)
    p = back.probabilities(x)
    assert p.min() >= 0 and p.max() <= 1 and p[y].mean() > p[~y].mean() + 0.3  # it learned the hits
    assert back.fit_on == {"candidates": 600, "positives": int(y.sum()), "target_iou": 0.7}
    doc = json.loads((tmp_path / "calibrator.json").read_text())
    (tmp_path / "other.json").write_text(json.dumps(dict(doc, features=["score"])))
    with pytest.raises(InputError, match="other.json: not a usable calibrator"):
        Calibrator.load(tmp_path / "other.json")
    with pytest.raises(ValueError, match="all misses"):
        fit(x, np.zeros(len(x), dtype=bool), method, DecodeConfig())


def test_calibrated_rows_rank_by_probability() -> None:
    curve = np.r_[np.full(10, -3.0), np.full(5, 3.0), np.full(15, -3.0)]  # an event at 10-15 s
    detr = [[0.0, 8.0, 0.9], [10.0, 15.0, 0.4], [20.0, 30.0, 0.3]]
    x = features(detr, detr, curve, 30.0)
    assert x.shape == (3, len(FEATURES)) and x[:, FEATURES.index("detr_score")].tolist() == [0.9, 0.4, 0.3]
    assert np.argmax(x[:, FEATURES.index("saliency_contrast")]) == 1
    assert hits(detr, [[10.0, 16.0]]).tolist() == [False, True, False]
    xs, ys = _candidates()
    cal = fit(xs, ys, "logistic", DecodeConfig())
    cal.params["coef"] = [0.0] * len(FEATURES)
    cal.params["coef"][FEATURES.index("saliency_contrast")] = 1.0  # a calibrator trusting the saliency
    rows = cal.rescore(detr, detr, curve, 30.0)
    assert rows[0][:2] == [10.0, 15.0] and [r[2] for r in rows] == sorted((r[2] for r in rows), reverse=True)


def _jsonl(path) -> list:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _amr(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, WANDB_MODE="disabled")
    return subprocess.run([sys.executable, "-m", "amr.cli", *args], capture_output=True, text=True, env=env)


def test_decode_choose_calibrate_and_predict_on_a_trained_run(tmp_path) -> None:
    from amr.inference.predictor import Predictor
    from amr.results.report.runs import find_runs

    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "amr.training.run", "experiment=castella_only", "debug=fast", f"paths.root={tmp_path}"]
    proc = subprocess.run(
        [*cmd, f"hydra.run.dir={run}"], capture_output=True, text=True, env=dict(os.environ, WANDB_MODE="disabled")
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "rescored"

    # the official decoding again: the run's own predictions and metrics, line for line
    assert _amr("decode", str(run), "--out", str(out / "detr"), "--decode", "detr").returncode == 0
    preds = "predictions/test_preds.jsonl"
    assert _jsonl(out / "detr" / preds) == _jsonl(run / preds)
    assert json.loads((out / "detr" / "test_metrics.json").read_text()) == json.loads(
        (run / "test_metrics.json").read_text()
    )

    # a weight chosen on validation: the best of the grid there, test decoded once with it
    proc = _amr(
        "decode", str(run), "--out", str(out / "hybrid"), "--decode", "hybrid", "--choose", "detr_weight=0,0.5,1"
    )
    assert proc.returncode == 0, proc.stderr
    for step in ("run: val queries", "run: test queries", "choosing on validation R1@0.7", "decoding"):
        assert step in proc.stderr  # the long steps show their progress
    doc = json.loads((out / "hybrid" / "rescore.json").read_text())
    figures = [row["R1@0.7"] for row in doc["validation"]]
    assert len(figures) == 3 and doc["decode"]["detr_weight"] == [0.0, 0.5, 1.0][int(np.argmax(figures))]
    val = json.loads((out / "hybrid" / "predictions" / "val_metrics.json").read_text())
    assert val["brief"]["MR-full-R1@0.7"] == max(figures)
    assert "decode.detr_weight=chosen" in json.loads((out / "hybrid" / "run.json").read_text())["overrides"]

    # a calibrator fit on validation, on the chosen decoding, written under --out alone: the run it
    # was fit for is not touched (it was: RUN/checkpoints/calibrator.json changed amr predict on RUN)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    proc = _amr("calibrate", str(out / "hybrid"), "--out", str(out / "calibrated"))  # 2 val queries, no hit
    assert proc.returncode == 2 and "all misses: nothing to calibrate" in proc.stderr
    proc = _amr("calibrate", str(out / "hybrid"), "--out", str(out / "calibrated"), "--target-iou", "0.3")
    assert proc.returncode == 0, proc.stderr
    ckpt = run / "checkpoints" / "best.ckpt"
    cal_path = out / "calibrated" / "calibrator.json"
    cal = Calibrator.load(cal_path)
    assert cal.decoder().name == "hybrid" and cal.decoder().detr_weight == doc["decode"]["detr_weight"]
    again = _amr("calibrate", str(out / "hybrid"), "--out", str(out / "again"), "--target-iou", "0.3")
    assert again.returncode == 0 and Calibrator.load(out / "again" / "calibrator.json") == cal
    iso = _amr(
        "calibrate", str(out / "hybrid"), "--out", str(tmp_path / "iso"), "--target-iou", "0.3", "--method", "isotonic"
    )
    assert (
        iso.returncode == 0 and Calibrator.load(tmp_path / "iso" / "calibrator.json").method == "isotonic" != cal.method
    )
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    assert not (out / "hybrid" / "calibrator.json").exists()

    # Predictor: the checkpoint's own decoding unless a calibrator is given; then it and its decoder,
    # on a long (windowed) recording too; each says what formed its moments
    plain = Predictor(ckpt, device="cpu")
    assert plain.calibrator is None and plain.decode == DecodeConfig()  # the run's own (official) decoding
    assert plain.decoding == "decode=detr (the checkpoint's), no calibrator"
    p = Predictor(ckpt, device="cpu", calibrator=cal_path)
    assert p.calibrator == cal and p.decode == cal.decoder()
    assert p.decoding == f"decode=hybrid (the calibrator's), logistic calibrator {cal_path}"
    rng = np.random.default_rng(0)
    moments = p.predict(rng.standard_normal((400, 768)).astype(np.float32), rng.standard_normal((6, 768)), top_k=5)
    assert len(moments) == 5 and all(0 <= m.score <= 1 and 0 <= m.start < m.end <= 400 for m in moments)
    with pytest.raises(InputError, match="fit on decode=hybrid"):
        Predictor(ckpt, device="cpu", decode=DecodeConfig("saliency"), calibrator=cal_path)

    # every result reads as a run; fused seeds too
    assert _amr("ensemble", str(out / "detr"), str(out / "hybrid"), "--out", str(out / "fused")).returncode == 0
    systems = {r.system(None) for r in find_runs([out])}
    assert len(systems) == 4 and any("ensemble=wbf" in s for s in systems)
    assert any("calibrator=logistic" in s for s in systems)

    # one-line errors before any work
    for args, expected in [
        (["--out", str(out / "detr")], "output exists"),
        (["--out", str(out / "x"), "--set", "penalty=-2"], "--set needs --decode"),
        (["--out", str(out / "x"), "--decode", "saliency", "--set", "detr_weight=0.3"], "not read by decode=saliency"),
        (["--out", str(out / "x"), "--decode", "hybrid", "--choose", "detr_weight=a"], "needs a float"),
        (
            ["--out", str(out / "x"), "--decode", "hybrid", "--choose", "detr_weight=0,1", "--metric", "R5@0.7"],
            "unknown metric",
        ),
        (["--out", str(out / "x"), "--metric", "mAP"], "--metric: only read with --choose"),
    ]:
        proc = _amr("decode", str(run), *args)
        assert proc.returncode == 2 and expected in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
    assert not (out / "x").exists()


def test_isotonic_calibration_keeps_each_ranking() -> None:
    rng = np.random.default_rng(1)
    xs, ys = _candidates()
    iso = fit(xs, ys, "isotonic", DecodeConfig())
    for _ in range(20):
        rows = sorted(
            (
                [float(a), float(a + 3), float(s)]
                for a, s in zip(rng.integers(0, 50, 10), rng.normal(size=10), strict=True)
            ),
            key=lambda r: -r[2],
        )
        curve = rng.normal(size=60)
        assert [r[:2] for r in iso.rescore(rows, rows, curve, 60.0)] == [r[:2] for r in rows]


@pytest.mark.parametrize(
    ("method", "spoil", "message"),
    [
        ("logistic", lambda d: d["params"]["coef"].__setitem__(0, float("nan")), "params.coef must be 8 finite"),
        ("logistic", lambda d: d["params"]["scale"].__setitem__(0, 0.0), "params.scale must be positive"),
        ("logistic", lambda d: d["params"].__setitem__("mean", [0.0]), "params.mean must be 8 finite"),
        ("isotonic", lambda d: d["params"]["y"].__setitem__(0, float("inf")), "params.y must be a list of finite"),
        ("isotonic", lambda d: d["params"]["y"].reverse(), "one non-decreasing table"),
        ("isotonic", lambda d: d["params"].__setitem__("x", d["params"]["x"][:-1]), "of equal lengths"),
    ],
)
def test_a_calibrator_with_nan_or_misshapen_numbers_is_one_line(tmp_path, method, spoil, message, capsys) -> None:
    """A calibrator file is checked when read: NaN would print every score as nan and fill a
    submission with NaN."""
    from amr.cli import main

    x, y = _candidates()
    fit(x, y, method, DecodeConfig()).save(tmp_path / "cal.json")
    doc = json.loads((tmp_path / "cal.json").read_text())
    spoil(doc)
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    with pytest.raises(InputError, match=f"bad.json: not a usable calibrator \\(.*{re.escape(message)}"):
        Calibrator.load(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(InputError, match=r"list.json: not a usable calibrator \(not a JSON object\)"):
        Calibrator.load(tmp_path / "list.json")
    from tests.helpers import random_checkpoint

    ckpt = random_checkpoint(tmp_path / "m.ckpt")
    np.savez(tmp_path / "a.npz", features=np.ones((20, 768), dtype=np.float32))
    with pytest.raises(SystemExit):
        main(
            [
                "predict",
                "--ckpt",
                str(ckpt),
                "--audio",
                str(tmp_path / "a.npz"),
                "--query",
                "q",
                "--calibrator",
                str(tmp_path / "bad.json"),
            ]
        )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a usable calibrator" in err[0]
