"""Packing of b-bit unsigned codes into bytes, little end first.

Each row is an independent bit stream: code ``i`` occupies stream bits
``[i*b, (i+1)*b)``, least significant bit first, and stream bit ``j`` is bit
``j % 8`` of byte ``j // 8``. For b = 4 this is "two codes per byte, low nibble
first". Rows are padded to whole bytes with zero bits.

>>> import torch
>>> codes = torch.tensor([[1, 2, 15]], dtype=torch.uint8)
>>> pack(codes, 4).tolist()
[[33, 15]]
>>> unpack(pack(codes, 4), 4, 3).tolist()
[[1, 2, 15]]
"""

from __future__ import annotations

import numpy as np
import torch

MAX_CODE_BITS = 16


def packed_bytes(count: int, bits: int) -> int:
    """Bytes one row of ``count`` codes of width ``bits`` takes."""
    return (count * bits + 7) // 8


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack ``codes [rows, count]`` (each < 2**bits) into uint8 ``[rows, packed_bytes]``."""
    if not 1 <= bits <= MAX_CODE_BITS:
        raise ValueError(f"code width {bits} out of range 1..{MAX_CODE_BITS}")
    rows, count = codes.shape
    nbytes = packed_bytes(count, bits)
    codes = codes.to(torch.int32)
    if bits == 8:
        return codes.to(torch.uint8).contiguous()
    if bits == 16:  # the bit stream is the codes' little-endian bytes; the general path's temporaries are 64x
        return torch.stack((codes & 0xFF, codes >> 8), dim=-1).reshape(rows, nbytes).to(torch.uint8)
    if bits in (1, 2, 4) and count * bits % 8 == 0:
        per = 8 // bits
        c = codes.reshape(rows, nbytes, per)
        out = torch.zeros(rows, nbytes, dtype=torch.int32)
        for i in range(per):
            out |= c[..., i] << (i * bits)
        return out.to(torch.uint8)
    # General widths: expand to a bit stream, then fold eight bits per byte.
    shifts = torch.arange(bits, dtype=torch.int32)
    stream = ((codes.unsqueeze(-1) >> shifts) & 1).reshape(rows, count * bits)
    stream = torch.nn.functional.pad(stream, (0, nbytes * 8 - count * bits))
    weights = (1 << torch.arange(8, dtype=torch.int32))
    return (stream.reshape(rows, nbytes, 8) * weights).sum(-1).to(torch.uint8)


def unpack(packed: torch.Tensor, bits: int, count: int, dtype: torch.dtype = torch.int32) -> torch.Tensor:
    """Inverse of :func:`pack`: uint8 ``[rows, bytes]`` to int32 (or ``dtype``, wide enough) codes ``[rows, count]``.

    In NumPy: these are a few passes over small arrays, where PyTorch's
    threaded elementwise ops cost more to start than to run (10x at a
    1536 x 576 layer's codes); loading a checkpoint unpacks every layer.
    """
    if not 1 <= bits <= MAX_CODE_BITS:
        raise ValueError(f"code width {bits} out of range 1..{MAX_CODE_BITS}")
    data = packed.detach().cpu().contiguous().numpy()
    wanted = torch.empty(0, dtype=dtype).numpy().dtype
    rows = data.shape[0]
    if bits == 8:
        return torch.from_numpy(data[:, :count].astype(wanted))
    if bits == 16:
        low, high = data[:, 0 : 2 * count : 2].astype(np.int32), data[:, 1 : 2 * count : 2].astype(np.int32)
        return torch.from_numpy((low | (high << 8)).astype(wanted, copy=False))
    if bits in (1, 2, 4) and count * bits % 8 == 0:
        per, mask = 8 // bits, (1 << bits) - 1
        out = np.empty(data.shape + (per,), np.uint8)
        for i in range(per):
            np.bitwise_and(np.right_shift(data, i * bits), mask, out=out[..., i])
        return torch.from_numpy(out.reshape(rows, -1)[:, :count].astype(wanted))
    # General widths: code i starts at stream bit i*b, so it lies in the three bytes from (i*b) // 8 (b <= 16,
    # shift <= 7): three gathers.
    start = np.arange(count, dtype=np.int64) * bits
    byte, shift = start >> 3, (start & 7).astype(np.int32)
    wide = np.zeros((rows, data.shape[1] + 2), np.int32)
    wide[:, : data.shape[1]] = data
    word = wide[:, byte] | (wide[:, byte + 1] << 8) | (wide[:, byte + 2] << 16)
    return torch.from_numpy(((word >> shift) & ((1 << bits) - 1)).astype(wanted, copy=False))
