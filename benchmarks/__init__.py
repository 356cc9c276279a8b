"""Kernel and training benchmarks (scripts; see benchmarks/RESULTS.md for the figures)."""
