"""Calibrated compression of whole models: calibration data, decoder blocks, Hessians, the block-by-block run."""
