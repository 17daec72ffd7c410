"""Reporting: run directories, metrics, summaries and plots."""
