"""Tuning: Ray Tune over Ray Train with Optuna and ASHA."""
