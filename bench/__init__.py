"""The benchmarks, each a module run from the project folder: ``.venv/bin/python -m bench.sweep [...]`` (see
docs/performance.md). They share :mod:`bench.common`."""
