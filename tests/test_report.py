"""Results: intervals and paired tests, per-length tables, figures that scale, report.md, the notebook,
and one-line errors; on simulated sweeps (no training) and on a real 2-system x 2-seed multirun."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest

from amr.results.report import Sweep, figures, interval, paired, permutation_p
from amr.results.report import sweep as sw
from amr.results.report.runs import stage_curves
from amr.testing.sweeps import fake_annotations, fake_sweep

ROOT = Path(__file__).resolve().parents[1]


def _amr(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "amr.cli", *args], capture_output=True, text=True, timeout=600)


# ---------------------------------------------------------------- statistics


def test_interval_covers_the_mean_and_grows_with_seed_spread() -> None:
    rng = np.random.default_rng(0)
    v = (rng.random(400) < 0.3).astype(float)
    one = interval(v)
    assert one.low < one.mean < one.high and one.mean == pytest.approx(100 * v.mean())
    same = interval(np.stack([v, v, v]))  # three identical seeds: only the queries vary
    spread = interval(np.stack([v, np.roll(v, 1) * 0, v]))  # one seed scores nothing
    assert (spread.high - spread.low) > 2 * (same.high - same.low)
    flat = interval(np.zeros(50))
    assert (flat.mean, flat.low, flat.high) == (0.0, 0.0, 0.0)


def test_paired_comparison_detects_a_shift_and_not_an_identity() -> None:
    rng = np.random.default_rng(1)
    a = rng.random(300)
    assert paired(a, a).p_value == 1.0 and paired(a, a).diff.mean == 0.0
    res = paired(a, a + 0.05 + rng.normal(0, 0.05, 300))
    assert res.p_value < 0.001 and res.diff.low > 0 and res.diff.mean == pytest.approx(5, abs=1)
    worse = paired(a, a - 0.05 + rng.normal(0, 0.05, 300))
    assert worse.p_value < 0.001 and worse.diff.high < 0


@pytest.mark.parametrize("kind", ["binary", "continuous"])
def test_permutation_test_rejects_identical_systems_at_the_nominal_rate(kind: str) -> None:
    """Two systems drawn from the same per-query distribution: p < 0.05 in about 5 % of the draws."""
    rng = np.random.default_rng(7)
    difficulty = rng.random(200)
    reps, rejected = 400, 0
    for i in range(reps):
        if kind == "binary":  # R1@0.7-like: each query hit with its own probability
            a, b = (rng.random((2, 200)) < difficulty).astype(float)
        else:  # mAP-like: per-query values around the query's difficulty
            a, b = np.clip(difficulty + rng.normal(0, 0.2, (2, 200)), 0, 1)
        rejected += permutation_p(a, b, n_resamples=999, seed=i) < 0.05
    rate = rejected / reps
    # binomial(400, 0.05): sd 1.1 points; the binary test is slightly conservative (discrete statistic)
    assert 0.02 <= rate <= 0.085, rate


# ---------------------------------------------------------------- simulated sweeps

PIVOT_STAGE = [(p, s) for s in (["pretrain", "finetune"], ["pretrain"], ["finetune"]) for p in ("de", "fr", "es")]


def _systems(n: int) -> dict[str, dict]:
    systems = {"baseline": {"stages": [], "noise": 0.5}}
    for k in range(n - 1):
        pivot, stages = PIVOT_STAGE[k % len(PIVOT_STAGE)]
        precision = ("32", "bf16-mixed")[k // len(PIVOT_STAGE)]
        overrides = [
            f"augment.backtranslation.pivots=[{pivot}]",
            f"augment.backtranslation.stages=[{','.join(stages)}]",
            f"trainer.precision={precision}",
        ]
        spec = {"experiment": "system1", "overrides": overrides, "pivots": [pivot], "stages": stages}
        systems[f"s{k}"] = dict(spec, noise=0.45 - 0.02 * k)
    return systems


@pytest.fixture(scope="module")
def simulated(tmp_path_factory) -> dict[int, Path]:
    root = tmp_path_factory.mktemp("simulated")
    gt = fake_annotations(root / "data" / "castella_test_release.jsonl", n=200)
    return {n: fake_sweep(root / f"sweep{n}", gt, _systems(n)) for n in (2, 12)}


def _label_boxes(fig):
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    return [t.get_window_extent(r) for ax in fig.axes for t in ax.get_yticklabels() if t.get_visible() and t.get_text()]


def _no_overlap(fig) -> None:
    boxes = _label_boxes(fig)
    assert boxes
    assert not [(a, b) for a, b in combinations(boxes, 2) if a.overlaps(b)]
    w, h = fig.canvas.get_width_height()
    assert all(b.y0 >= -1 and b.y1 <= h + 1 for b in boxes)  # inside the figure (x is checked by bbox_inches)


def test_bar_charts_scale_with_the_systems_and_never_overlap(simulated) -> None:
    heights = {}
    for n, path in simulated.items():
        sweep = Sweep([path])
        assert len(sweep.systems) == n
        for make in (sw.headline_figure, sw.bucket_figure):
            fig = make(sweep)
            _no_overlap(fig)
            rows = len(sweep.systems)
            assert fig.get_figheight() >= figures.ROW_IN * rows  # height grows with rows
            for ax in fig.axes:  # whiskers never cross zero, every axis says its metric and unit
                assert "(%)" in ax.get_xlabel()
                for coll in ax.collections:
                    for seg in coll.get_segments():
                        assert np.asarray(seg)[:, 0].min() >= 0
            heights[(n, make.__name__)] = fig.get_figheight()
            figures._plt().close(fig)
    assert heights[(12, "headline_figure")] > 3 * heights[(2, "headline_figure")] / 2


def test_grid_appears_only_when_pivot_and_stage_vary(simulated) -> None:
    assert sw.grid_figure(Sweep([simulated[2]])) is None  # the baseline and one back-translated setting
    grid = Sweep([simulated[12]]).grid()
    assert grid is not None
    cells, rows, cols = grid
    assert set(rows) == {"de", "fr", "es", "none"}
    assert set(cols) == {"pretrain+finetune", "pretrain", "finetune", "none"}
    assert cells[("de", "pretrain+finetune")][1] == 4  # two precisions x two seeds pooled
    assert cells[("de", "pretrain")][1] == 2


def test_report_writes_one_readable_document(simulated, tmp_path) -> None:
    out = tmp_path / "report"
    proc = _amr("report", str(simulated[12]), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    doc = (out / "report.md").read_text()
    for section in ("## Systems", "## By GT window length", "## Paired comparisons", "## Figures", "## Method"):
        assert section in doc
    assert "A = baseline" in doc and doc.count("| system1 [") >= 11 * 3  # every system against the baseline
    for png in ("bars.png", "buckets.png", "pivot_stage.png"):
        assert f"]({png})" in doc and (out / png).stat().st_size > 5000
    table = json.loads((out / "table.json").read_text())
    assert len(table) == 12 and all(row["R1@0.7"]["ci"][0] <= row["R1@0.7"]["mean"] for row in table)
    # systems that are better by construction (less noise) come out ahead of the baseline
    est = {row["system"]: row["mAP"]["mean"] for row in table}
    assert max(est.values()) > est["baseline"] + 5
    proc = _amr("report", str(simulated[12]), "--reference", "nope")
    assert proc.returncode != 0 and "no system 'nope'" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_bad_inputs_are_one_line_errors(simulated, tmp_path) -> None:
    proc = _amr("report", str(simulated[2]), "--by", "augment.backtranslation.pivot")
    assert proc.returncode != 0 and "no run overrides 'augment.backtranslation.pivot'" in proc.stderr
    # a sweep mixing datasets
    other = fake_annotations(tmp_path / "other" / "castella_test_release.jsonl", n=50, seed=3)
    mixed = fake_sweep(tmp_path / "mixed", other, {"x": {"noise": 0.3}}, seeds=(1,))
    shutil.copytree(simulated[2], tmp_path / "mixed" / "more")
    proc = _amr("report", str(tmp_path / "mixed"))
    assert proc.returncode != 0 and "tested on different data" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    # a run without predictions
    (next(mixed.glob("*/predictions/test_preds.jsonl"))).unlink()
    shutil.rmtree(tmp_path / "mixed" / "more")
    proc = _amr("report", str(mixed))
    assert proc.returncode != 0 and "has no predictions/test_preds.jsonl" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    proc = _amr("report", str(simulated[2]), "--buckets", "3,1")
    assert proc.returncode != 0 and "strictly increasing" in proc.stderr


def test_curves_skip_the_post_fit_row_and_mark_the_first_best(tmp_path) -> None:
    logs = tmp_path / "run" / "logs" / "finetune"
    logs.mkdir(parents=True)
    rows = ["epoch,step,train/loss,val/R1@0.7,val/mAP"]
    for e, r1 in enumerate([1.0, 5.0, 5.0, 2.0]):
        rows += [f"{e},{10 * e},,{r1},{r1 / 2}", f"{e},{10 * e},3.0,,"]
    rows.append("4,40,,5.0,2.5")  # the best checkpoint's re-validation after fitting, in older logs
    (logs / "metrics.csv").write_text("\n".join(rows) + "\n")
    run = type("R", (), {"path": tmp_path / "run", "pretrain_dir": None, "config": {}})()
    (values, best) = stage_curves(run, ["R1@0.7", "mAP"])["finetune"]  # type: ignore[arg-type]
    assert sorted(values["R1@0.7"]) == [1, 2, 3, 4] and best == 2  # epochs counted from 1


def test_timelines_label_every_row_without_overlap(simulated) -> None:
    from amr.data.annotations import load_annotations
    from amr.results.report import query_timeline

    sweep = Sweep([simulated[2]])
    queries = load_annotations(sweep.runs[0].gt_path)[:5]
    a, b = sweep.systems[0].runs[0], sweep.systems[1].runs[0]
    fig = figures.timeline_figure(
        [query_timeline(q, {"A": a.predictions[q.qid], "B": b.predictions[q.qid]}) for q in queries]
    )
    _no_overlap(fig)
    assert len(_label_boxes(fig)) == 5 * 7  # GT + 3 windows x 2 systems per query
    figures._plt().close(fig)


# ---------------------------------------------------------------- a real multirun


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report_root")
    sweep = root / "sweep"
    cmd = [
        sys.executable,
        "-m",
        "amr.training.run",
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


def test_report_of_a_real_sweep_and_the_notebook(sweep, tmp_path) -> None:
    out = tmp_path / "report"
    proc = _amr("report", str(sweep), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    table = [ln for ln in proc.stdout.splitlines() if ln.startswith("| ") and not ln.startswith("| system |")]
    assert {row.split("|")[1].strip() for row in table} == {"baseline", "system1"}
    assert all(row.split("|")[2].strip() == "2" for row in table)  # n = 2 seeds per system
    for png in ("bars.png", "buckets.png", "val_curves.png"):
        assert (out / png).stat().st_size > 5000
    assert list((out / "timelines").glob("*.png"))
    # both stages' curves (pre-training from the shared cache), no point past the last trained epoch
    curves = Sweep([sweep]).curves()
    assert {c.stage for c in curves} == {"pretrain", "finetune"}
    assert all(sorted(c.values["R1@0.7"]) == [1, 2] for c in curves)  # debug=fast: two epochs
    # baseline and system1 pre-train differently, each seed on its own: four pre-training curves
    assert sum(c.stage == "pretrain" for c in curves) == 4
    # the per-length metrics are logged and kept with the test metrics
    metrics = json.loads(next(sweep.glob("*/test_metrics.json")).read_text())
    assert metrics["0-3s"]["range"] == [0.0, 3.0] and "MR-3-10s-R1@0.7" in metrics["brief"]
    header = next(sweep.glob("*/logs/finetune/metrics.csv")).read_text().splitlines()[0]
    assert "val/3-10s/R1@0.7" in header

    import nbformat
    from nbclient import NotebookClient

    def execute(env_sweep: str):
        nb = nbformat.read(ROOT / "notebooks" / "results.ipynb", as_version=4)
        os.environ["AMR_SWEEP"] = env_sweep
        try:
            resources = {"metadata": {"path": str(ROOT / "notebooks")}}
            NotebookClient(nb, timeout=300, kernel_name="python3", allow_errors=True, resources=resources).execute()
        finally:
            del os.environ["AMR_SWEEP"]
        return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]

    outputs = execute(str(sweep))
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 3  # systems, lengths, timelines
    printed = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "does not vary the pivot or the back-translation stage" in printed
    markdown = "".join(o["data"]["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {}))
    assert "R1@0.7 0-3s" in markdown and "A = baseline" in markdown and "minus **baseline**" in markdown
    # the compared system is named as what it is: the other system with the highest mAP, above or below
    assert " mAP points above it on average" in markdown or " mAP points below it on average" in markdown
    assert "best" not in json.dumps([c["source"] for c in nbformat.read(ROOT / "notebooks" / "results.ipynb", 4).cells])
    errors = [o for o in execute(str(tmp_path / "missing")) if o.output_type == "error"]
    first = errors[0]  # the first cell stops with the message (later cells then have no sweep)
    assert first["ename"] == "FileNotFoundError" and "no sweep at" in first["evalue"] and "AMR_SWEEP" in first["evalue"]


def test_compare_two_runs_and_two_systems(sweep) -> None:
    runs = sorted(p.parent for p in sweep.glob("*/test_metrics.json"))
    proc = _amr("compare", str(runs[0]), str(runs[-1]))
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("| R1") or ln.startswith("| mAP")]
    assert len(lines) == 5
    p_values = [float(ln.split("|")[6]) for ln in lines]
    assert all(0.0 <= p <= 1.0 for p in p_values)
    proc = _amr("compare", str(runs[0]), str(sweep))
    assert proc.returncode != 0 and "holds 2 systems" in proc.stderr
    assert "p (BH)" not in _amr("compare", str(runs[0]), str(runs[-1])).stdout  # a column compare has not


def test_a_folder_of_links_to_runs_reads_as_those_runs(tmp_path) -> None:
    """``amr compare``/``report`` on a folder of symlinked run folders (it found none); a link back
    up, or two links to one run, read each run once."""
    from amr.results.report import find_runs

    gt = fake_annotations(tmp_path / "data" / "castella_test_release.jsonl", n=20)
    sweep = fake_sweep(tmp_path / "sweep", gt, {"system1": {"noise": 0.3}}, seeds=(1, 2))
    links = tmp_path / "links"
    links.mkdir()
    for run in sweep.iterdir():
        (links / run.name).symlink_to(run, target_is_directory=True)
    (links / "again").symlink_to(next(sweep.iterdir()), target_is_directory=True)
    (links / "up").symlink_to(links, target_is_directory=True)
    assert sorted(r.seed for r in find_runs([links])) == [1, 2]
    proc = _amr("compare", str(links), str(sweep))
    assert proc.returncode == 0, proc.stderr


def test_a_pre_training_shared_by_systems_is_drawn_once(tmp_path) -> None:
    gt = fake_annotations(tmp_path / "data" / "castella_test_release.jsonl", n=30)
    sweep = fake_sweep(tmp_path / "sweep", gt, {"system1": {"noise": 0.3}, "system2": {"noise": 0.3}}, seeds=(1,))
    cache = tmp_path / "cache" / "key"
    (cache / "logs" / "pretrain").mkdir(parents=True)
    (cache / "logs" / "pretrain" / "metrics.csv").write_text("epoch,step,train/loss,val/R1@0.7\n0,1,2.0,\n0,1,,4.0\n")
    for info_path in sweep.glob("*/run.json"):  # both fine-tune from the same cache entry
        info = json.loads(info_path.read_text())
        info_path.write_text(json.dumps(dict(info, pretrain_checkpoint=str(cache / "best.ckpt"))))
    curves = Sweep([sweep], metrics=["R1@0.7"]).curves()
    assert [(c.system, c.stage) for c in curves] == [("system1", "pretrain")]


def test_timeline_colours_one_per_system_and_never_the_gt_green() -> None:
    from matplotlib.colors import to_hex

    rows = [("#1 (0.9)", 1.0, 2.0), ("#2 (0.5)", 3.0, 4.0)]
    fig = figures.timeline_figure([figures.Timeline("q: one system", 10.0, [[1.0, 2.0]], rows)])
    bars = [to_hex(p.get_facecolor()) for p in fig.axes[0].patches]
    figures._plt().close(fig)
    gt, preds = bars[:2], bars[2:]  # background and GT window, then the two predictions
    assert len(set(preds)) == 1 and preds[0] not in gt
    both = [("A #1 (0.9)", 1.0, 2.0), ("B #1 (0.5)", 3.0, 4.0)]
    fig = figures.timeline_figure([figures.Timeline("q: two systems", 10.0, [[1.0, 2.0]], both)])
    preds = [to_hex(p.get_facecolor()) for p in fig.axes[0].patches][2:]
    figures._plt().close(fig)
    assert len(set(preds)) == 2 and not set(preds) & set(gt)


def test_panels_of_zeros_have_no_negative_axis_and_a_scale_of_points() -> None:
    from amr.results.report.figures import Curve, Panel, bar_figure, curves_figure
    from amr.results.report.stats import Estimate

    zeros = [Estimate(0.0, 0.0, 0.0), Estimate(0.0, 0.0, 0.0)]
    bars = bar_figure(["a", "b"], [Panel("R1@0.7", zeros), Panel("mAP", [Estimate(10, 5, 15), None])], "t")
    assert [ax.get_xlim() for ax in bars.axes][0] == bars.axes[1].get_xlim() and bars.axes[0].get_xlim()[1] > 15
    only_zeros = bar_figure(["a", "b"], [Panel("R1@0.7", zeros)], "t")
    assert only_zeros.axes[0].get_xlim() == pytest.approx((0.0, 116.0))
    curves = curves_figure(
        [Curve("s", 1, "finetune", {"R1@0.7": {1: 0.0, 2: 0.0}, "mAP": {1: 3.0, 2: 5.0}}, 2)], ["R1@0.7", "mAP"]
    )
    zero_axis = curves.axes[0]
    assert zero_axis.get_ylim() == (0.0, 5.0) and min(zero_axis.get_yticks()) >= 0
