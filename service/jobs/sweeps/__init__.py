"""Sweeps: a base and a grid of variants x seeds run as ordinary jobs (plan), their
statistics (stats, summary) and the accuracy-vs-parameters figure (plot)."""
