"""Implementation on FPGA toolchains: Yosys resource counts (UltraScale+), place and route on ECP5."""
