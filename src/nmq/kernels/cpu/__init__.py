"""The C++ CPU kernels (the sources here, excluded from wheels) and the extension built from them, ``_nmq_cpu``."""
