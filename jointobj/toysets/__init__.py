"""Toy sets: finite distributions with validators, their builders, the exact oracle, and user sets."""
