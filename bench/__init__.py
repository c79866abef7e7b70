"""Benchmarks for batchinfer (run as modules, e.g. ``python -m bench.transformers_vs_generate``)."""
