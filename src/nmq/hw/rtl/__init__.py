"""Amaranth HDL of the N:M zero-skipping systolic array (see docs/hardware.md)."""
