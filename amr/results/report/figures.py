"""The report's figures, in one style: every size grows with what it shows, so 2 or 30 systems read
alike. Each ``*_figure`` returns an open matplotlib Figure (tests measure it); ``save`` writes and
closes it."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from amr.io import atomic_open
from amr.results.report.stats import Estimate

STYLE: dict[str, Any] = {
    "font.size": 8,
    "axes.titlesize": 9,
    "axes.labelsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "legend.fontsize": 7,
    "legend.frameon": False,
    "savefig.dpi": 150,
}
BAR_COLOUR = "#4C72B0"
ROW_IN = 0.30  # inches per bar row holding a one-line label
LINE_IN = 0.15  # inches per further label line
LABEL_CHARS = 42  # wrap system names longer than this
CHAR_IN = 0.062  # width of one label character at 8 pt


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.style.use(STYLE)
    return plt


def save(fig: Any, path: Path) -> None:
    """Write the figure as PNG atomically and close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", bbox_inches="tight")
    _plt().close(fig)


def png_bytes(fig: Any) -> bytes:
    """The figure as PNG bytes (for a notebook's ``display(Image(...))``); closes it."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def _wrap(label: str) -> str:
    return textwrap.fill(label, LABEL_CHARS, break_long_words=False, break_on_hyphens=False)


@dataclass
class Panel:
    """One metric (or bucket) of a bar chart: its axis label and one estimate per row (None: no data)."""

    xlabel: str
    values: Sequence[Estimate | None]
    title: str = ""


def _panel_top(values: Sequence[Estimate | None]) -> float:
    """The largest score a panel shows (0 for a panel of zeros or no data)."""
    return max([min(v.high, 100.0) for v in values if v is not None and not np.isnan(v.mean)] + [0.0])


def _bars(ax: Any, values: Sequence[Estimate | None], y: np.ndarray, top: float) -> None:
    """``top``: the panel's own largest score, or for a panel of zeros the figure's (100 when the
    whole figure is zeros), so that a zero is drawn on a scale of points, not of fractions of one."""
    for yi, v in zip(y, values, strict=True):
        if v is None or np.isnan(v.mean):
            ax.text(0, yi, " no queries", va="center", fontsize=7, color="grey")
            continue
        lo, hi = max(v.low, 0.0), min(v.high, 100.0)  # a score is never below 0 or above 100
        ax.barh(yi, v.mean, height=0.62, color=BAR_COLOUR)
        ax.errorbar(v.mean, yi, xerr=[[v.mean - lo], [hi - v.mean]], fmt="none", ecolor="black", capsize=2, lw=0.8)
        ax.text(hi + 0.012 * top, yi, f"{v.mean:.1f}", va="center", fontsize=7)
    ax.set_xlim(0, top * 1.16)


def bar_figure(labels: Sequence[str], panels: Sequence[Panel], title: str) -> Any:
    """Horizontal bars with 95 % interval whiskers: one row per label, one panel per metric."""
    plt = _plt()
    wrapped = [_wrap(lb) for lb in labels]
    lines = [w.count("\n") + 1 for w in wrapped]
    heights = [ROW_IN + LINE_IN * (n - 1) for n in lines]
    label_in = CHAR_IN * max(len(line) for w in wrapped for line in w.split("\n"))
    fig, axes = plt.subplots(
        1,
        len(panels),
        figsize=(label_in + 2.6 * len(panels) + 0.4, sum(heights) + 1.1),
        sharey=True,
        squeeze=False,
    )
    # row centres spaced by each row's own height (in units of ROW_IN)
    y = np.cumsum([0.0] + [h / ROW_IN for h in heights[:-1]]) + 0.5 * (np.array(heights) / ROW_IN - 1)
    figure_top = max([_panel_top(p.values) for p in panels]) or 100.0
    for ax, panel in zip(axes[0], panels, strict=True):
        _bars(ax, panel.values, y, _panel_top(panel.values) or figure_top)
        ax.set_xlabel(panel.xlabel)
        ax.set_title(panel.title)
        ax.grid(axis="y", visible=False)
    axes[0, 0].set_yticks(y, wrapped)
    axes[0, 0].set_ylim(y[-1] + 0.6 * heights[-1] / ROW_IN, -0.6 * heights[0] / ROW_IN)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def grid_figure(
    cells: Mapping[tuple[str, str], tuple[Estimate, int]],
    rows: Sequence[str],
    cols: Sequence[str],
    what: str,
    title: str,
) -> Any:
    """A heatmap of estimates over two settings (e.g. pivot x augmentation stage): each cell's mean,
    interval and number of runs written in."""
    plt = _plt()
    grid = np.full((len(rows), len(cols)), np.nan)
    for (r, c), (est, _) in cells.items():
        grid[rows.index(r), cols.index(c)] = est.mean
    fig, ax = plt.subplots(figsize=(1.8 + 1.5 * len(cols), 1.0 + 0.8 * len(rows)))
    im = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", aspect="auto")
    for (r, c), (est, n) in cells.items():
        i, j = rows.index(r), cols.index(c)
        dark = grid[i, j] < np.nanmean(grid)
        text = f"{est.mean:.1f}\n[{max(est.low, 0):.1f}, {est.high:.1f}]\n{n} runs"
        ax.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if dark else "black")
    ax.set_xticks(range(len(cols)), cols)
    ax.set_yticks(range(len(rows)), rows)
    ax.grid(False)
    ax.set_xlabel("back-translation stages")
    ax.set_ylabel("pivot")
    fig.colorbar(im, ax=ax, label=what)
    ax.set_title(title)
    fig.tight_layout()
    return fig


@dataclass
class Curve:
    """One run's validation values of one stage: metric -> {epoch: value}; ``best`` the chosen epoch."""

    system: str
    seed: int
    stage: str
    values: Mapping[str, Mapping[int, float]]
    best: int | None


def curves_figure(curves: Sequence[Curve], metrics: Sequence[str]) -> Any:
    """Validation curves: a row per metric, a column per stage, a colour per system (a line per seed),
    the best epoch of each run marked."""
    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    stages = [s for s in ("pretrain", "finetune") if any(c.stage == s for c in curves)]
    systems = list(dict.fromkeys(c.system for c in curves))
    colours = plt.get_cmap("tab10" if len(systems) <= 10 else "tab20")
    fig, axes = plt.subplots(
        len(metrics), len(stages), figsize=(4.2 * len(stages), 2.4 * len(metrics) + 0.5), squeeze=False
    )
    for c in curves:
        colour = colours(systems.index(c.system) % colours.N)
        for i, metric in enumerate(metrics):
            ax = axes[i, stages.index(c.stage)]
            pts = c.values.get(metric, {})
            if not pts:
                continue
            epochs = sorted(pts)
            ax.plot(epochs, [pts[e] for e in epochs], color=colour, lw=1, alpha=0.85)
            if c.best is not None and c.best in pts:
                ax.plot([c.best], [pts[c.best]], marker="*", ms=8, color=colour, mec="black", mew=0.4)
    shown = [v for c in curves for m in metrics for v in c.values.get(m, {}).values()]
    figure_top = max(shown + [0.0]) or 100.0
    for i, metric in enumerate(metrics):
        for j, stage in enumerate(stages):
            ax = axes[i, j]
            low, high = ax.get_ylim()
            if low < 0:  # a score is never negative: no axis below 0, and zeros on a scale of points
                ax.set_ylim(0, high if high >= 1 else figure_top)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            shared = " (each pre-training once)" if stage == "pretrain" else ""
            ax.set_title(f"{stage}: validation {metric}{shared}")
            ax.set_xlabel("epoch")
            ax.set_ylabel(f"{metric} (%)")
    handles = [plt.Line2D([], [], color=colours(k % colours.N), label=_wrap(s)) for k, s in enumerate(systems)]
    handles.append(plt.Line2D([], [], ls="none", marker="*", color="grey", mec="black", label="best epoch"))
    fig.legend(handles=handles, loc="lower center", ncol=min(3, len(handles)), bbox_to_anchor=(0.5, 0.0))
    legend_rows = -(-len(handles) // 3)
    fig.tight_layout(rect=(0, 0.06 * legend_rows / max(1, len(metrics)), 1, 1))
    return fig


SYSTEM_COLOURS = (BAR_COLOUR, "#DD8452", "#8172B3", "#C44E52", "#937860", "#DA8BC3")  # no green: GT is green


def _system_of(label: str) -> str:
    """``"ref #2 (0.81)"`` -> ``"ref"``; a single system's ``"#2 (0.81)"`` -> ``""``."""
    return label.rsplit("#", 1)[0].strip()


@dataclass
class Timeline:
    """One query: its recording length, GT windows and labelled predicted windows ``(label, st, ed)``."""

    title: str
    duration: float
    gt: Sequence[Sequence[float]]
    rows: Sequence[tuple[str, float, float]]


def timeline_figure(timelines: Sequence[Timeline]) -> Any:
    """Each query a panel: the GT row on top, then one row per prediction, labelled on the y axis."""
    plt = _plt()
    heights = [0.55 + 0.24 * (len(t.rows) + 1) for t in timelines]
    fig, axes = plt.subplots(
        len(timelines), 1, figsize=(9, sum(heights)), squeeze=False, gridspec_kw={"height_ratios": heights}
    )
    for ax, t in zip(axes[:, 0], timelines, strict=True):
        n = len(t.rows)
        ax.barh(n, t.duration, color="#eeeeee", height=0.7)
        for st, ed in t.gt:
            ax.barh(n, ed - st, left=st, color="tab:green", height=0.7)
        groups = list(dict.fromkeys(_system_of(label) for label, _, _ in t.rows))  # a colour per system
        for k, (label, st, ed) in enumerate(t.rows):
            colour = SYSTEM_COLOURS[groups.index(_system_of(label)) % len(SYSTEM_COLOURS)]
            ax.barh(n - 1 - k, max(ed - st, 0.3), left=st, color=colour, height=0.6)
        ax.set_yticks(range(n, -1, -1), ["GT"] + [label for label, _, _ in t.rows])
        ax.set_xlim(0, t.duration)
        ax.grid(axis="y", visible=False)
        ax.set_title(textwrap.shorten(t.title, 110), fontsize=8, loc="left")
    axes[-1, 0].set_xlabel("time (s)")
    fig.tight_layout()
    return fig


def saliency_figure(
    saliency: Sequence[float] | np.ndarray, moments: Sequence[Sequence[float]], gt: Sequence[Sequence[float]] = ()
) -> Any:
    """One recording's saliency per second (a line), its moments (shaded, numbered by rank) and
    the GT windows (a green band along the bottom)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 2.6))
    n = max(len(saliency), 1)
    ax.plot(np.arange(len(saliency)) + 0.5, saliency, color=BAR_COLOUR, linewidth=1.2)
    top = ax.get_ylim()[1]
    for k, (st, ed) in enumerate(moments):
        ax.axvspan(st, ed, color=SYSTEM_COLOURS[1], alpha=0.08 if k else 0.35, linewidth=0)
        ax.text((st + ed) / 2, top, f"#{k + 1}", ha="center", va="top", fontsize=7)
    for st, ed in gt:
        ax.axvspan(st, ed, ymax=0.05, color="tab:green", linewidth=0)
    ax.set_xlim(0, n)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("saliency")
    fig.tight_layout()
    return fig
