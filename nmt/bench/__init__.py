"""Benchmarks behind `nmt bench ...`; each prints its figures (and --json)."""
