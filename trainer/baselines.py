"""Baselines (being written)."""
