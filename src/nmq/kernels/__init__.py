"""Compute kernels behind the backends: ``cpu`` (C++ sources, built into ``nmq.kernels.cpu._nmq_cpu``), ``triton`` (GPU)."""
