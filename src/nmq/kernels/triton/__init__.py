"""Triton kernels for compressed weights: W4A16 matmul straight from the packed bytes.

``dense_int4`` runs N == M weights (two codes per byte, unpacked with shifts
and an interleave); ``nm_int4`` runs any N:M with M <= 16 from the kept codes
and ``index`` metadata, rebuilding each dense tile in registers before
``tl.dot``. Both accumulate in fp32 and take fp16, bf16 or fp32 activations.
The host side (packing, autotuning, launch) is :mod:`.launch`.

This package itself does not import Triton (an optional dependency); its
modules do. Set ``TRITON_INTERPRET=1`` before importing them to run the
kernels on CPU tensors.
"""
