"""Benchmarks of the unified layer against native framework code (not part of the test run).

``python -m benchmarks`` prints a table of ratios and writes it as JSON; see ``run.py``.
"""
