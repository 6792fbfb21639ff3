"""Measurement helpers shared by `benchmarks/` and `vqt bench`."""
