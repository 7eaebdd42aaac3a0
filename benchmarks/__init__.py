"""Benchmark scripts (run as files: python benchmarks/NAME.py); not part of the installed package."""
