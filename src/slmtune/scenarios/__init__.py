"""Scenarios: record formats, prompt templates, metrics, real data sources and before/after reports.

See docs/scenarios.md. ``slmtune train --scenario NAME``, ``slmtune eval RUN --scenario NAME``, ``slmtune report``,
``slmtune data fetch NAME``.
"""
