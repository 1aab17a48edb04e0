"""Monitoring, which only observes: the variants' live profiles, the DriftMonitor, drift tests and their gauges."""
