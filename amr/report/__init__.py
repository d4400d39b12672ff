"""Results researchers can trust: per-system tables with intervals over seeds and queries, per-length
metrics, paired tests, figures and ``report.md`` (``amr report``, ``amr compare``, the notebook)."""

from amr.report import document, figures, sweep
from amr.report.document import compare, report
from amr.report.runs import COLUMNS, Run, find_runs
from amr.report.stats import Estimate, interval, paired, permutation_p
from amr.report.sweep import Sweep, System
from amr.report.timelines import query_timeline, write_timelines

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
