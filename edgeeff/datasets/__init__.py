"""Labelled datasets built locally for tests and benchmarks; nothing is downloaded."""
