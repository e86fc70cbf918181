"""Benchmarks: programs that print tables and JSON records, never timed tests (DESIGN.md section 6)."""
