"""Benchmarks: suites of attack x defense runs with tables and plots, and the server-cost sweep."""

from clipfed.bench.suites import SUITES, Suite, list_suites

__all__ = ["SUITES", "Suite", "list_suites"]
