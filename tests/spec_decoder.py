"""An independent, bit-by-bit reading of the format in DESIGN.md section 2 (and of docs/format.md's 16-bit
float values).

Plain Python integers only, sharing no code with nmq's decoder, so a test that
compares the two checks the format itself and not one function against itself.
"""

import itertools
import math
import struct


def read_codes(row_bytes, bits, count):
    stream = int.from_bytes(bytes(row_bytes), "little")
    return [(stream >> (i * bits)) & ((1 << bits) - 1) for i in range(count)]


def unrank(rank, n, m):
    # colex order: rank = sum C(c_i, i), c_1 < ... < c_n; greedy from the top
    out = []
    for i in range(n, 0, -1):
        c = i - 1
        while math.comb(c + 1, i) <= rank:
            c += 1
        out.append(c)
        rank -= math.comb(c, i)
    return sorted(out)


def read_float16(code, dtype):
    """The value of a 16-bit code read as an IEEE half (float16) or as the top half of a float32 (bfloat16)."""
    if dtype == "float16":
        return struct.unpack("<e", code.to_bytes(2, "little"))[0]
    return struct.unpack("<f", (code << 16).to_bytes(4, "little"))[0]


def decode(t):
    """Dense weight as a list of rows of floats (Python), read from t's raw fields."""
    out, k = t.shape
    n, m = t.pattern.n, t.pattern.m
    unit = m if t.group_size == -1 else t.group_size
    kp = -(-k // unit) * unit
    group = kp if t.group_size == -1 else t.group_size
    mgroups, kept = kp // m, kp // m * n
    groups = kp // group
    rows = []
    for r in range(out):
        codes = read_codes(t.values[r].tolist(), t.bits, kept)
        if n == m:
            pos = [list(range(m))] * mgroups
        elif t.metadata == "index":
            ib = math.ceil(math.log2(m))
            idx = read_codes(t.meta[r].tolist(), ib, mgroups * n)
            pos = [idx[g * n:(g + 1) * n] for g in range(mgroups)]
        else:
            rb = math.ceil(math.log2(math.comb(m, n)))
            ranks = read_codes(t.meta[r].tolist(), rb, mgroups)
            pos = [unrank(x, n, m) for x in ranks]
        dense = [0.0] * kp
        if t.bits == 16:  # 16-bit float values: no scales, no zeros
            dtype = t.header()["value_dtype"]
            for j, (g, p) in enumerate(itertools.product(range(mgroups), range(n))):
                dense[g * m + pos[g][p]] = read_float16(codes[j], dtype)
            rows.append(dense[:k])
            continue
        zeros = ([1 << (t.bits - 1)] * groups if t.symmetric
                 else read_codes(t.zeros[r].tolist(), t.bits, groups))
        for j, (g, p) in enumerate(itertools.product(range(mgroups), range(n))):
            col = g * m + pos[g][p]
            qg = col // group
            dense[col] = (codes[j] - zeros[qg]) * float(t.scales[r, qg])
        rows.append(dense[:k])
    return rows
