"""Benchmark questions and per-domain prompt pools built from real, offline-installable data."""
