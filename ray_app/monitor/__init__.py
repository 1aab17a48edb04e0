"""Monitoring: whylogs profiles, drift against the training reference, and the Prometheus exporter."""
