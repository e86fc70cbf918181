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


def unpack(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Inverse of :func:`pack`: uint8 ``[rows, bytes]`` to int32 codes ``[rows, count]``."""
    if not 1 <= bits <= MAX_CODE_BITS:
        raise ValueError(f"code width {bits} out of range 1..{MAX_CODE_BITS}")
    rows = packed.shape[0]
    data = packed.to(torch.int32)
    if bits == 8:
        return data[:, :count]
    if bits in (1, 2, 4) and count * bits % 8 == 0:
        per = 8 // bits
        shifts = torch.arange(per, dtype=torch.int32) * bits
        return ((data.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)).reshape(rows, -1)[:, :count]
    # General widths: code i starts at stream bit i*b, so it lies in the three bytes from (i*b) // 8 (b <= 16,
    # shift <= 7); three gathers, where expanding every byte to eight bits took eight int32s per byte.
    start = torch.arange(count, dtype=torch.int64) * bits
    byte, shift = start >> 3, (start & 7).to(torch.int32)
    data = torch.nn.functional.pad(data, (0, 2))
    word = data[:, byte] | (data[:, byte + 1] << 8) | (data[:, byte + 2] << 16)
    return (word >> shift) & ((1 << bits) - 1)
