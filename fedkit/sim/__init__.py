"""Simulation: the in-process link (device profiles and virtual clock come later)."""
