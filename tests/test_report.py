"""A 2-system x 2-seed synthetic multirun, then `amr report`, `amr compare` and the notebook."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from amr.report import COLUMNS, bootstrap_ci, paired_bootstrap

ROOT = Path(__file__).resolve().parents[1]


def test_bootstrap_helpers_behave() -> None:
    rng = np.random.default_rng(0)
    a = {k: rng.random(400) for k in COLUMNS}
    ci = bootstrap_ci(a)
    for k in COLUMNS:
        assert ci[k][0] < 100 * a[k].mean() < ci[k][1]
    same = paired_bootstrap(a, a)
    assert all(same[k]["diff"] == 0 and same[k]["p_value"] == 1.0 for k in COLUMNS)
    better = paired_bootstrap(a, {k: v + 0.2 for k, v in a.items()})
    assert all(better[k]["diff"] == pytest.approx(20) and better[k]["p_value"] < 0.01 for k in COLUMNS)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report_root")
    sweep = root / "sweep"
    cmd = [
        sys.executable,
        "-m",
        "amr.train",
        "-m",
        "experiment=baseline,system1",
        "seed=1,2",
        "debug=fast",
        "logger=csv",
        f"paths.root={root}",
        f"hydra.sweep.dir={sweep}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, WANDB_MODE="disabled"), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return sweep


def _amr(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "amr.cli", *args], capture_output=True, text=True, timeout=300)


def test_report_table_charts_and_notebook(sweep, tmp_path) -> None:
    out = tmp_path / "report"
    proc = _amr("report", str(sweep), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    table = [ln for ln in proc.stdout.splitlines() if ln.startswith("| ") and not ln.startswith("| system |")]
    assert len(table) == 2
    assert all(row.split("|")[2].strip() == "2" for row in table)  # n = 2 seeds per system
    assert {row.split("|")[1].strip() for row in table} == {"baseline", "system1"}
    for png in ("bars.png", "val_curves.png"):
        assert (out / png).stat().st_size > 1000
    assert list((out / "timelines").glob("*.png"))
    assert (out / "table.csv").read_text().count("\n") == 3

    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(ROOT / "notebooks" / "results.ipynb", as_version=4)
    os.environ["AMR_REPORT_DIR"] = str(out)
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)


def test_compare_two_runs(sweep) -> None:
    runs = sorted(p.parent for p in sweep.glob("*/test_metrics.json"))
    proc = _amr("compare", str(runs[0]), str(runs[-1]))
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("| R1") or ln.startswith("| mAP")]
    assert len(lines) == 5
    p_values = [float(ln.rstrip(" |").split("|")[-1]) for ln in lines]
    assert all(0.0 <= p <= 1.0 for p in p_values)
