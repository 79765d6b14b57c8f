"""Benchmarks of the reconciler against the local doubles (``python -m bench.run``)."""
