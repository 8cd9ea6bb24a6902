"""Helpers every layer may use: registries, option checks, rank helpers."""
