"""Benchmarks behind ``demuse bench``: they print numbers and ratios measured in one run."""
