"""Where models come from and where they go: sources, the built-in model, checkpoints, synthetic models."""
