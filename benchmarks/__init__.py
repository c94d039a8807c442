"""Benchmarks for dfast_serve: HTTP load generator, in-process engine runner, metrics and plots.

Run them as modules from the repository root, e.g. ``python -m benchmarks.serving --help``.
"""
