"""Benchmarks run on demand (`.venv/bin/python bench/<name>.py`); see bench/README.md. Not collected by pytest."""
