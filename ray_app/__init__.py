"""ray_app: CI/CD for machine learning on Ray."""
