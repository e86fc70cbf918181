"""The ``nmq`` command line."""
