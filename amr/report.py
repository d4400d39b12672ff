"""Results researchers can trust: multi-seed tables with bootstrap confidence intervals, paired
comparisons, bar charts, timelines and validation curves."""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from amr.data.annotations import Query, load_annotations
from amr.errors import InputError
from amr.io import atomic_open, write_json
from amr.metrics.predictions import load_predictions
from amr.metrics.retrieval import SHORT_NAMES, THRESHOLDS, per_query_scores

COLUMNS = tuple(SHORT_NAMES.values())  # report columns, in the official brief order
_BRIEF = {short: key for key, short in SHORT_NAMES.items()}  # column -> official brief key


def metric_vectors(ap: np.ndarray, r1_iou: np.ndarray) -> dict[str, np.ndarray]:
    """Per-query contributions whose mean x 100 is each reported metric. ap: (Q, T), r1_iou: (Q,)."""
    t = list(THRESHOLDS)
    return {
        "R1@0.5": (r1_iou >= 0.5).astype(float),
        "R1@0.7": (r1_iou >= 0.7).astype(float),
        "mAP": ap.mean(1),
        "mAP@0.5": ap[:, t.index(0.5)],
        "mAP@0.75": ap[:, t.index(0.75)],
    }


@dataclass
class Run:
    path: Path
    experiment: str
    overrides: list[str]
    seed: int
    metrics: dict[str, Any]
    per_query: dict[str, np.ndarray] = field(default_factory=dict)
    qids: list[str] = field(default_factory=list)

    def system(self, by: Sequence[str] | None, common: frozenset[str] = frozenset()) -> str:
        """The system's name: its experiment and the overrides that set it apart (not the seed, not
        those every compared run shares), or the values of the ``by`` keys."""
        kv = dict(o.split("=", 1) for o in self.overrides if "=" in o)
        if by:
            return ",".join(f"{k}={kv.get(k, '-')}" for k in by)
        rest = [
            o for o in self.overrides if not o.startswith(("seed=", "experiment=")) and "=" in o and o not in common
        ]
        return self.experiment + (f" [{', '.join(rest)}]" if rest else "")


def find_runs(roots: Sequence[str | Path]) -> list[Run]:
    runs = []
    for root in roots:
        root = Path(root)
        if not root.exists():
            raise InputError("no such run or multirun folder", root)
        for metrics in sorted(root.rglob("test_metrics.json")):
            info_path = metrics.parent / "run.json"
            if not info_path.is_file():
                continue
            info = json.loads(info_path.read_text())
            run = Run(
                metrics.parent, info["experiment"], info["overrides"], info["seed"], json.loads(metrics.read_text())
            )
            preds_path = metrics.parent / "predictions" / "test_preds.jsonl"
            gt_path = Path(info["annotations"]["test"])
            if preds_path.is_file() and gt_path.is_file():
                gt = {q.qid: np.asarray(q.windows, dtype=float) for q in load_annotations(gt_path)}
                preds = {q: p["pred_relevant_windows"] for q, p in load_predictions(preds_path).items()}
                run.qids, ap, r1 = per_query_scores(preds, {q: gt[q] for q in preds})
                run.per_query = metric_vectors(ap, r1)
            runs.append(run)
    if not runs:
        raise InputError(
            "no finished run (test_metrics.json with run.json) below the given folders", ", ".join(map(str, roots))
        )
    return runs


def bootstrap_ci(vectors: dict[str, np.ndarray], n_boot: int = 1000, seed: int = 0) -> dict[str, tuple[float, float]]:
    """95 % percentile intervals of 100 x mean over queries resampled with replacement."""
    rng = np.random.default_rng(seed)
    n = len(next(iter(vectors.values())))
    idx = rng.integers(0, n, (n_boot, n))
    return {
        k: tuple(float(x) for x in np.percentile(100 * v[idx].mean(1), [2.5, 97.5]))  # type: ignore[misc]
        for k, v in vectors.items()
    }


def paired_bootstrap(
    a: dict[str, np.ndarray], b: dict[str, np.ndarray], n_boot: int = 2000, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Difference B - A per metric on the same queries: value, 95 % CI and a two-sided p-value."""
    rng = np.random.default_rng(seed)
    n = len(next(iter(a.values())))
    idx = rng.integers(0, n, (n_boot, n))
    out = {}
    for k in COLUMNS:
        d = b[k] - a[k]
        boot = 100 * d[idx].mean(1)
        p = 2 * min((boot <= 0).mean(), (boot >= 0).mean())
        out[k] = {
            "diff": float(100 * d.mean()),
            "ci_low": float(np.percentile(boot, 2.5)),
            "ci_high": float(np.percentile(boot, 97.5)),
            "p_value": float(min(1.0, p)),
        }
    return out


def _aligned(runs: Sequence[Run]) -> dict[str, np.ndarray] | None:
    """Per-query vectors averaged over the runs (seeds) of one system, on their common queries."""
    if not runs or any(not r.per_query for r in runs):
        return None
    common = sorted(set.intersection(*(set(r.qids) for r in runs)))
    rows = [[{q: i for i, q in enumerate(r.qids)}[q] for q in common] for r in runs]
    return {k: np.mean([r.per_query[k][idx] for r, idx in zip(runs, rows, strict=True)], axis=0) for k in COLUMNS}


def system_rows(runs: Sequence[Run], by: Sequence[str] | None = None) -> list[dict[str, Any]]:
    groups: dict[str, list[Run]] = defaultdict(list)
    common = frozenset.intersection(*(frozenset(r.overrides) for r in runs)) if runs else frozenset()
    for r in runs:
        groups[r.system(by, common)].append(r)
    rows = []
    for system, members in groups.items():
        row: dict[str, Any] = {"system": system, "n": len(members), "seeds": sorted(m.seed for m in members)}
        vec = _aligned(members)
        ci = bootstrap_ci(vec) if vec is not None else {}
        for col in COLUMNS:
            vals = np.array([m.metrics["brief"][_BRIEF[col]] for m in members])
            row[col] = {
                "mean": float(vals.mean()),
                "std": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0,
                "ci": ci.get(col),
            }
        rows.append(row)
    return rows


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    head = "| system | n | " + " | ".join(COLUMNS) + " |"
    lines = [head, "|---|---|" + "---|" * len(COLUMNS)]
    for r in rows:
        cells = []
        for c in COLUMNS:
            m = r[c]
            ci = f" [{m['ci'][0]:.1f}, {m['ci'][1]:.1f}]" if m["ci"] else ""
            cells.append(f"{m['mean']:.2f} ± {m['std']:.2f}{ci}")
        lines.append(f"| {r['system']} | {r['n']} | " + " | ".join(cells) + " |")
    lines.append("\nmean ± std over seeds; [95 % bootstrap CI over test queries, seed-averaged]")
    return "\n".join(lines)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def bar_chart(rows: Sequence[dict[str, Any]], path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(COLUMNS) * max(1, len(rows)) / 2), 4))
    width = 0.8 / max(1, len(rows))
    x = np.arange(len(COLUMNS))
    for i, r in enumerate(rows):
        means = [r[c]["mean"] for c in COLUMNS]
        stds = [r[c]["std"] for c in COLUMNS]
        ax.bar(x + i * width, means, width, yerr=stds, capsize=3, label=f"{r['system']} (n={r['n']})")
    ax.set_xticks(x + width * (len(rows) - 1) / 2, COLUMNS)
    ax.set_ylabel("score (mean ± std over seeds)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _csv_attempts(stage_dir: Path) -> list[Path]:
    """A stage's CSV logs in order: those kept from attempts before a resume, then the last one."""
    earlier = sorted(stage_dir.glob("metrics.before-resume-*.csv"), key=lambda p: int(p.stem.rsplit("-", 1)[1]))
    return [*earlier, stage_dir / "metrics.csv"]


def val_curves(runs: Sequence[Run], path: Path, metric: str = "val/R1@0.7") -> bool:
    """Validation curves of every run from its CSV logs; False when no run has CSV logs."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    drawn = False
    for r in runs:
        for stage_dir in sorted(p.parent for p in r.path.glob("logs/*/metrics.csv")):
            by_epoch: dict[int, float] = {}
            for csv_path in _csv_attempts(stage_dir):  # a resumed stage: earlier attempts first
                with csv_path.open() as f:
                    for row in csv.DictReader(f):
                        if row.get(metric):
                            by_epoch[int(row["epoch"])] = float(row[metric])
            if by_epoch:
                epochs = sorted(by_epoch)
                ax.plot(
                    epochs, [by_epoch[e] for e in epochs], label=f"{r.system(None)} seed={r.seed} ({stage_dir.name})"
                )
                drawn = True
    if not drawn:  # no figure rather than an empty one
        plt.close(fig)
        return False
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_timelines(
    path: Path,
    predictions: Sequence[dict[str, Any]],
    queries: Sequence[Query],
    loggers: Sequence[Any] = (),
    n: int = 4,
    top: int = 3,
) -> None:
    """Recording length, GT windows and the top predictions (with scores) of a few test queries."""
    plt = _plt()
    by_qid = {q.qid: q for q in queries}
    chosen = [p for p in predictions if p["qid"] in by_qid][:n]
    if not chosen:
        return
    fig, axes = plt.subplots(len(chosen), 1, figsize=(9, 1.3 * len(chosen)), squeeze=False)
    for ax, p in zip(axes[:, 0], chosen, strict=True):
        q = by_qid[p["qid"]]
        ax.barh(1, q.duration, color="#eeeeee", height=0.8)
        for st, ed in q.windows or []:
            ax.barh(1, ed - st, left=st, color="tab:green", height=0.8)
        for k, (st, ed, score) in enumerate(p["pred_relevant_windows"][:top]):
            ax.barh(0, max(ed - st, 0.5), left=st, color="tab:blue", alpha=0.3 + 0.7 * score, height=0.6 - 0.1 * k)
            ax.text(st, -0.45, f"{score:.2f}", fontsize=6)
        ax.set_yticks([0, 1], ["pred", "GT"])
        ax.set_xlim(0, q.duration)
        ax.set_title(f"{q.qid}: {q.query}"[:90], fontsize=8)
    axes[-1, 0].set_xlabel("seconds")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    for lg in loggers:
        if hasattr(lg, "log_image"):
            lg.log_image(key="test/timeline", images=[str(path)])


def _check_by(runs: Sequence[Run], by: Sequence[str] | None) -> None:
    """Every ``--by`` key must be overridden by some run (a misspelt key would pool them all)."""
    known = sorted({o.split("=", 1)[0].lstrip("+~") for r in runs for o in r.overrides if "=" in o})
    for key in by or ():
        if key not in known:
            raise InputError(f"no run overrides '{key}' (the runs override: {', '.join(known)})", "--by")


def report(roots: Sequence[str | Path], out: str | Path | None, by: Sequence[str] | None = None) -> str:
    runs = find_runs(roots)
    _check_by(runs, by)
    rows = system_rows(runs, by)
    text = markdown(rows)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        with atomic_open(out / "table.md") as f:
            f.write(text + "\n")
        with atomic_open(out / "table.csv") as f:
            w = csv.writer(f)
            w.writerow(
                ["system", "n", "seeds"] + [f"{c} {s}" for c in COLUMNS for s in ("mean", "std", "ci_low", "ci_high")]
            )
            for r in rows:
                cells = []
                for c in COLUMNS:
                    ci = r[c]["ci"] or ("", "")
                    cells += [f"{r[c]['mean']:.4f}", f"{r[c]['std']:.4f}", ci[0], ci[1]]
                w.writerow([r["system"], r["n"], " ".join(map(str, r["seeds"]))] + cells)
        write_json(out / "table.json", rows)
        bar_chart(rows, out / "bars.png")
        if not val_curves(runs, out / "val_curves.png"):
            text += "\n\nno validation curves: no run has CSV logs (train with logger=csv or logger=[csv,wandb])"
        for run in runs[:8]:
            tl = run.path / "predictions" / "test_timeline.png"
            if tl.is_file():
                (out / "timelines").mkdir(exist_ok=True)
                (out / "timelines" / f"{run.path.name}.png").write_bytes(tl.read_bytes())
    return text


def compare(run_a: str | Path, run_b: str | Path) -> str:
    a, b = find_runs([run_a]), find_runs([run_b])
    if len(a) != 1 or len(b) != 1:
        raise InputError("compare takes two single run folders")
    ra, rb = a[0], b[0]
    if not ra.per_query or not rb.per_query:
        raise InputError("both runs need predictions/test_preds.jsonl and their annotations")
    if set(ra.qids) != set(rb.qids):
        raise InputError("the runs were tested on different queries", rb.path)
    order = [rb.qids.index(q) for q in ra.qids]
    vb = {k: v[order] for k, v in rb.per_query.items()}
    res = paired_bootstrap(ra.per_query, vb)
    lines = [
        f"B - A over {len(ra.qids)} paired test queries (A = {ra.path}, B = {rb.path})",
        "| metric | A | B | B - A | 95 % CI | p |",
        "|---|---|---|---|---|---|",
    ]
    for k in COLUMNS:
        r = res[k]
        lines.append(
            f"| {k} | {100 * ra.per_query[k].mean():.2f} | {100 * vb[k].mean():.2f} | {r['diff']:+.2f} | "
            f"[{r['ci_low']:+.2f}, {r['ci_high']:+.2f}] | {r['p_value']:.3f} |"
        )
    return "\n".join(lines)
