"""A board build: the accelerator with one compressed layer in on-chip ROMs and a self-check (PASS/FAIL on LEDs and UART).

:func:`~.build.write_board` writes the top level, the pin constraints and the
expected results for an FPGA board; :func:`~.sim.simulate_board` runs the
same top in Verilator.
"""

from .build import BOARDS, BoardBuild, write_board
from .sim import simulate_board

__all__ = ["BOARDS", "BoardBuild", "simulate_board", "write_board"]
