"""Benchmarks: the measurements of BENCHMARKS.md (python -m scripts.benchmarks.NAME; bench_all.sh runs a set of
them)."""
