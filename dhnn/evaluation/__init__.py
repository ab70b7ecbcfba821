"""Evaluation: metrics of paths and node sets, and batched inference."""
