"""Benchmarks: each script prints a measured figure; run from the repository root as `python -m bench.<script>`."""
