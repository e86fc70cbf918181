"""The ISA units (kernels_avx2.cpp, kernels_avx512.cpp) run no code when the extension loads.

Each unit is compiled with its own -m flags, so any dynamic initializer in it
(a namespace-scope object with a constructor that is not constant-evaluated)
runs those instructions at ``import``, before the runtime dispatch can choose a
level: on a CPU without AVX-512 the import dies with SIGILL. A dynamic
initializer shows up as a ``_GLOBAL__sub_I_`` function in the object file.
Compiled here at -O0, where GCC folds nothing that C++ does not require.
"""

from __future__ import annotations

import platform
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
KDIR = ROOT / "src" / "nmq" / "kernels" / "cpu"


def _isa_flags(target: str) -> list[str]:
    """The -m flags CMakeLists.txt gives one ISA unit."""
    text = (ROOT / "CMakeLists.txt").read_text()
    block = re.search(rf"target_compile_options\({target} PRIVATE(.*?)\)", text, re.DOTALL)
    assert block, f"{target}'s flags not found in CMakeLists.txt"
    return block.group(1).split()


@pytest.mark.parametrize("unit", ["avx2", "avx512"])
def test_isa_unit_has_no_dynamic_initializer(unit, tmp_path):
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip(f"the ISA units are x86 code; this machine is {platform.machine()}")
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None or shutil.which("nm") is None:
        pytest.skip("no C++ compiler or nm on PATH (the extension cannot be built here either)")
    obj = tmp_path / f"{unit}.o"
    subprocess.run([cxx, "-std=c++17", "-O0", "-DNMQ_X86=1", *_isa_flags(f"nmq_isa_{unit}"), "-c",
                    str(KDIR / f"kernels_{unit}.cpp"), "-o", str(obj)], check=True, capture_output=True)
    symbols = subprocess.run(["nm", str(obj)], check=True, capture_output=True, text=True).stdout
    initializers = [line.split()[-1] for line in symbols.splitlines() if "_GLOBAL__sub_I" in line]
    assert initializers == [], f"kernels_{unit}.cpp runs code at load time: {initializers}"
