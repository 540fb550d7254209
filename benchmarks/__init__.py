"""Benchmarks: ``make bench`` runs :mod:`benchmarks.run`, which prints each module's table."""
