"""`amr ensemble`: 1-D weighted box fusion and score averaging of several runs' predictions."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from amr.errors import InputError
from amr.results.ensemble import average, ensemble, wbf
from amr.testing.sweeps import fake_annotations, fake_sweep


def _ranked(rng: np.random.Generator, n: int = 10) -> np.ndarray:
    st = rng.uniform(0, 100, n).round(1)
    rows = np.stack([st, st + rng.uniform(0.5, 30, n).round(1), rng.random(n).round(4)], 1)
    return rows[np.argsort(-rows[:, 2], kind="stable")]


@pytest.mark.parametrize("method", [wbf, average])
def test_fusing_identical_runs_gives_the_run(method) -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        run = _ranked(rng)
        for n in (2, 3, 5):
            fused = method([run] * n, [1.0] * n)
            np.testing.assert_array_equal(fused, run)  # bit for bit, order included


def test_wbf_by_hand() -> None:
    a = np.array([[10.0, 20.0, 0.8], [50.0, 60.0, 0.4]])
    b = np.array([[12.0, 22.0, 0.6], [80.0, 90.0, 0.5]])
    fused = wbf([a, b], [1.0, 1.0], iou=0.55)
    # [10, 20] (0.8) and [12, 22] (0.6) overlap with IoU 8/12 = 0.67: one window, score-weighted
    np.testing.assert_allclose(fused[0], [(0.8 * 10 + 0.6 * 12) / 1.4, (0.8 * 20 + 0.6 * 22) / 1.4, 0.7])
    # windows found by one of the two runs keep half their score, in score order
    np.testing.assert_allclose(fused[1:], [[80, 90, 0.25], [50, 60, 0.2]])
    # below the IoU threshold nothing merges
    assert len(wbf([a, b], [1.0, 1.0], iou=0.7)) == 4
    # weights: run b counts three times as much
    heavy = wbf([a, b], [1.0, 3.0], iou=0.55)
    np.testing.assert_allclose(heavy[0, 2], (0.8 + 3 * 0.6) / 4)


def test_wbf_never_merges_two_windows_of_one_run() -> None:
    run = np.array([[10.0, 20.0, 0.9], [11.0, 21.0, 0.8]])  # IoU 0.82 within the run
    fused = wbf([run, run], [1.0, 1.0])
    np.testing.assert_array_equal(fused, run)
    assert len(wbf([run], [1.0])) == 2


@pytest.fixture
def runs(tmp_path):
    gt = fake_annotations(tmp_path / "data" / "castella_test_release.jsonl", n=80)
    sweep = fake_sweep(tmp_path / "sweep", gt, {"a": {"noise": 0.3}, "b": {"noise": 0.2}}, seeds=(1, 2))
    return sorted(p for p in sweep.iterdir() if p.is_dir())


def test_ensemble_of_identical_runs_scores_as_the_run(runs, tmp_path) -> None:
    got = ensemble([runs[0], runs[0], runs[0]], tmp_path / "same")
    expected = json.loads((runs[0] / "test_metrics.json").read_text())
    assert got["test"]["full"] == expected["full"]
    assert "0-3s" in got["test"]  # per-length figures too
    assert json.loads((tmp_path / "same" / "ensemble.json").read_text())["runs"] == [str(runs[0])] * 3
    fused = ensemble(runs, tmp_path / "all")  # four different runs fuse into something else
    assert fused["test"]["full"] != expected["full"]
    lines = (tmp_path / "all" / "predictions" / "test_preds.jsonl").read_text().splitlines()
    assert len(lines) == 80 and all(len(json.loads(ln)["pred_relevant_windows"]) <= 10 for ln in lines)


def test_bad_ensembles_fail_before_any_work(runs, tmp_path) -> None:
    with pytest.raises(InputError, match="at least two runs"):
        ensemble(runs[:1], tmp_path / "x")
    with pytest.raises(InputError, match="one positive finite weight per run"):
        ensemble(runs[:2], tmp_path / "x", weights=[1.0])
    with pytest.raises(InputError, match="unknown method"):
        ensemble(runs[:2], tmp_path / "x", method="nms")
    preds = runs[1] / "predictions" / "test_preds.jsonl"
    preds.write_text("".join(preds.read_text().splitlines(keepends=True)[:-1]))  # one query fewer
    with pytest.raises(InputError, match="predicts other test queries"):
        ensemble(runs[:2], tmp_path / "x")
    assert not (tmp_path / "x").exists()
    proc = subprocess.run(
        [sys.executable, "-m", "amr.cli", "ensemble", str(runs[0]), str(runs[2]), "--out", str(runs[3])],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and "output exists" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
