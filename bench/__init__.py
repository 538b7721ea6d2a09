"""Benchmarks (`python -m bench NAME [--quick] --json`) and the SMT2020 fab simulation."""
