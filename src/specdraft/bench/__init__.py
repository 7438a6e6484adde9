"""Benchmarking: run methods side by side on the same questions and summarize tau / speedup."""
