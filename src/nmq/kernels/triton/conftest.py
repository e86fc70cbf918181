"""Doctest collection: the kernel modules import Triton, an optional dependency."""

import importlib.util

KERNEL_MODULES = ["common.py", "dense_int4.py", "nm_int4.py", "launch.py"]
collect_ignore = [] if importlib.util.find_spec("triton") else KERNEL_MODULES
