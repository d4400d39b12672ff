"""Results researchers can trust: per-system tables with intervals over seeds and queries, per-length
metrics, paired tests, figures and ``report.md`` (``amr report``, ``amr compare``, the notebook)."""

from amr.results.report import document, figures, sweep
from amr.results.report.document import compare, report
from amr.results.report.runs import COLUMNS, Run, find_runs
from amr.results.report.stats import Estimate, interval, paired, permutation_p
from amr.results.report.sweep import Sweep, System
from amr.results.report.timelines import query_timeline, write_timelines

__all__ = [
    "document",
    "figures",
    "sweep",
    "COLUMNS",
    "Estimate",
    "Run",
    "Sweep",
    "System",
    "compare",
    "find_runs",
    "interval",
    "paired",
    "permutation_p",
    "query_timeline",
    "report",
    "write_timelines",
]
