"""nmq's C++ CPU kernels behind the backend interface: matmul, decode-step ops, calibration Gram matrices."""
