"""SystemHealer: fault diagnosis for distributed systems from KPI snapshots."""

__version__ = "0.1.0"
