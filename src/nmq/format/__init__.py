"""The canonical compressed weight: N:M patterns, bit packing, quantization specs, NMQTensor, storage accounting, files."""
