"""Plots and the markdown/HTML comparison report of evaluated runs."""

from __future__ import annotations

from msresnet.report.plots import plot_comparison, plot_sweep
from msresnet.report.report import collect_runs, write_report

__all__ = ["collect_runs", "plot_comparison", "plot_sweep", "write_report"]
