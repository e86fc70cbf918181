"""Applications built on the layers above: the demo and the report."""
