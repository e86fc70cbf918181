"""Compressing one weight: the recipe, pruning and quantization methods, the OBS loop."""
