"""Estimates without simulation: the cycle model and design-space exploration."""
