"""Implementation on FPGA toolchains: synthesis for resource counts."""
