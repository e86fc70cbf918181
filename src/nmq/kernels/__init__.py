"""Compute kernels behind the backends: ``cpu`` (C++ sources, built into ``nmq._nmq_cpu``), ``triton`` (GPU)."""
