"""Training: the torch model, the per-worker loop, and the TorchTrainer that runs it."""
