"""Figures and Markdown reports for sweeps and single runs (matplotlib, Agg canvas)."""
