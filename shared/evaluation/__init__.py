"""Evaluation metrics of the benchmark (PAPER.md: evaluation, better than the reference)."""
