"""`amr report` and `amr compare`: tables (Markdown, CSV, JSON), figures and ``report.md``."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from amr.errors import InputError
from amr.io import atomic_open, write_json
from amr.metrics.retrieval import DEFAULT_BUCKET_EDGES
from amr.results.report import figures
from amr.results.report import sweep as sw
from amr.results.report.runs import COLUMNS, data_digest
from amr.results.report.stats import Estimate, Paired
from amr.results.run_folder import RunFolder

METHOD = (
    "Intervals: 95 %; one seed: BCa bootstrap over test queries; several seeds: two-level bootstrap "
    "(seeds, then queries, resampled with replacement; percentile interval). Paired tests: two-sided paired "
    "permutation test over the same test queries (seed-averaged per-query values){bh}. The p-value treats each "
    "system's seed-averaged predictions as fixed (query sampling only) while the interval also carries the seeds' "
    "spread, so with few seeds an interval can include 0 where p < 0.05: claims about a training recipe should "
    "rest on the interval."
)
BH = "; p (BH): Benjamini-Hochberg adjusted over the table's comparisons"  # the report's table has that column


def _cell(est: Estimate | None, std: float | None = None) -> str:
    if est is None:
        return "-"
    spread = f" ± {std:.2f}" if std is not None else ""
    return f"{est.mean:.2f}{spread} [{max(est.low, 0):.1f}, {est.high:.1f}]"


def table_markdown(sweep: sw.Sweep) -> str:
    lines = ["| system | n | " + " | ".join(COLUMNS) + " |", "|---|---|" + "---|" * len(COLUMNS)]
    for s in sweep.systems:
        cells = [_cell(sweep.estimate(s, m), s.seed_std(m)) for m in COLUMNS]
        lines.append(f"| {s.name} | {len(s.runs)} | " + " | ".join(cells) + " |")
    lines.append("\nmean (± std over seeds, when several) [95 % interval over seeds and test queries]")
    return "\n".join(lines)


def bucket_markdown(sweep: sw.Sweep, metrics: Sequence[str] | None = None) -> str:
    metrics = metrics or sweep.metrics
    heads = [f"{m} {b}" for m in metrics for b in sweep.buckets]
    lines = ["| system | " + " | ".join(heads) + " |", "|---|" + "---|" * len(heads)]
    for s in sweep.systems:
        cells = [_cell(sweep.estimate(s, m, b)) for m in metrics for b in sweep.buckets]
        lines.append(f"| {s.name} | " + " | ".join(cells) + " |")
    sizes = "; ".join(sw.bucket_label(sweep, b) for b in sweep.buckets)
    lines.append(f"\nGT window length buckets ({sizes}); a query counts in every bucket one of its windows falls in")
    return "\n".join(lines)


def comparisons_markdown(sweep: sw.Sweep, reference: sw.System) -> str:
    rows = sweep.comparisons(reference)
    if not rows:
        return f"(only one system: nothing to compare with {reference.name})"
    adjusted = sw.p_adjusted([p.p_value for _, _, p in rows])
    lines = [
        f"B - A with A = {reference.name}, over the same test queries",
        "",
        "| system (B) | metric | B - A | 95 % interval | p | p (BH) |",
        "|---|---|---|---|---|---|",
    ]
    for (name, metric, p), q in zip(rows, adjusted, strict=True):
        d = p.diff
        lines.append(
            f"| {name} | {metric} | {d.mean:+.2f} | [{d.low:+.2f}, {d.high:+.2f}] | {p.p_value:.4f} | {q:.4f} |"
        )
    return "\n".join(lines)


def _write_tables(out: Path, sweep: sw.Sweep) -> None:
    with atomic_open(out / "table.csv") as f:
        w = csv.writer(f)
        w.writerow(
            ["system", "n", "seeds"] + [f"{c} {s}" for c in COLUMNS for s in ("mean", "std", "ci_low", "ci_high")]
        )
        for s in sweep.systems:
            cells: list[object] = []
            for c in COLUMNS:
                est, std = sweep.estimate(s, c), s.seed_std(c)
                ci = [f"{est.mean:.4f}", f"{est.low:.4f}", f"{est.high:.4f}"] if est else ["", "", ""]
                cells += [ci[0], "" if std is None else f"{std:.4f}", ci[1], ci[2]]
            w.writerow([s.name, len(s.runs), " ".join(map(str, s.seeds))] + cells)
    write_json(out / "table.json", sw.estimates_table(sweep))
    write_json(out / "buckets.json", {m: sw.mapping_rows(sweep, m) for m in COLUMNS})


def _write_figures(out: Path, sweep: sw.Sweep) -> list[tuple[str, str]]:
    """Every figure of the sweep; returns (caption, file name) of those drawn."""
    drawn = []
    figures.save(sw.headline_figure(sweep), out / "bars.png")
    drawn.append(("Test metrics per system", "bars.png"))
    figures.save(sw.bucket_figure(sweep), out / "buckets.png")
    drawn.append((f"{sweep.focus} by GT window length", "buckets.png"))
    grid = sw.grid_figure(sweep)
    if grid is not None:
        figures.save(grid, out / "pivot_stage.png")
        drawn.append(("Pivot x back-translation stage", "pivot_stage.png"))
    curves = sweep.curves()
    if curves:
        figures.save(figures.curves_figure(curves, sweep.metrics), out / "val_curves.png")
        drawn.append(("Validation curves (star: the epoch of the best checkpoint)", "val_curves.png"))
    for run in sweep.runs[:8]:
        tl = RunFolder(run.path).timeline
        if tl.is_file():
            (out / "timelines").mkdir(exist_ok=True)
            (out / "timelines" / f"{run.path.name}.png").write_bytes(tl.read_bytes())
    return drawn


def report(
    roots: Sequence[str | Path],
    out: str | Path | None,
    by: Sequence[str] | None = None,
    bucket_edges: Sequence[float] = DEFAULT_BUCKET_EDGES,
    reference: str | None = None,
    metrics: Sequence[str] = sw.HEADLINE,
) -> str:
    """The sweep's table (printed) and, with ``out``, every table, figure and ``report.md``;
    ``metrics`` are those of the figures, validation curves and paired comparisons."""
    sweep = sw.Sweep(roots, by, bucket_edges, metrics)
    ref = sweep.system(reference)
    text = table_markdown(sweep)
    if out is None:
        return text
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_open(out / "table.md") as f:
        f.write(text + "\n")
    _write_tables(out, sweep)
    drawn = _write_figures(out, sweep)
    n_queries = sweep.bucket_sizes["full"]
    parts = [
        "# Results",
        f"{len(sweep.runs)} runs, {len(sweep.systems)} systems, {n_queries} test queries "
        f"({sweep.runs[0].gt_path.name}).",
        "## Systems",
        text,
        "## By GT window length",
        bucket_markdown(sweep),
        "## Paired comparisons",
        comparisons_markdown(sweep, ref),
        "## Figures",
        *[f"**{caption}**\n\n![{caption}]({name})" for caption, name in drawn],
        "## Method",
        METHOD.format(bh=BH),
    ]
    with atomic_open(out / "report.md") as f:
        f.write("\n\n".join(parts) + "\n")
    if not any(name == "val_curves.png" for _, name in drawn):
        text += "\n\nno validation curves: no run has CSV logs (train with logger=csv or logger=[csv,wandb])"
    return text


def compare(run_a: str | Path, run_b: str | Path) -> str:
    """B - A over the same test queries; A and B are run folders or folders of one system's seeds."""
    a, b = sw.Sweep([run_a]), sw.Sweep([run_b])
    for s, path in ((a, run_a), (b, run_b)):
        if len(s.systems) != 1:
            raise InputError(f"holds {len(s.systems)} systems; compare takes one system on each side", path)
    if data_digest(a.runs[0].gt_path) != data_digest(b.runs[0].gt_path):
        raise InputError(f"tested on different data than {run_a} ({b.runs[0].gt_path})", run_b)
    sa, sb = a.systems[0], b.systems[0]
    lines = [
        f"B - A (A = {run_a}, {len(sa.runs)} run(s); B = {run_b}, {len(sb.runs)} run(s))",
        "| metric | A | B | B - A | 95 % interval | p | queries |",
        "|---|---|---|---|---|---|---|",
    ]
    for _, metric, p in sw.compare_systems(sa, [sb], COLUMNS):  # every metric of the table
        ea, eb = a.estimate(sa, metric), b.estimate(sb, metric)
        lines.append(_compare_line(metric, ea, eb, p))
    return "\n".join(lines + ["", METHOD.format(bh="")])


def _compare_line(metric: str, ea: Estimate | None, eb: Estimate | None, p: Paired) -> str:
    d = p.diff
    return (
        f"| {metric} | {ea.mean if ea else float('nan'):.2f} | {eb.mean if eb else float('nan'):.2f} | "
        f"{d.mean:+.2f} | [{d.low:+.2f}, {d.high:+.2f}] | {p.p_value:.4f} | {p.n_queries} |"
    )
