"""Running the generated accelerator: operand streams, the Verilator harness, the Amaranth simulator, the driver."""
