import torch
from hypothesis import given
from hypothesis import strategies as st

from nmq.format import bitpack


@given(bits=st.integers(1, 16), rows=st.integers(1, 4), count=st.integers(0, 70), seed=st.integers(0, 2**31 - 1))
def test_pack_unpack_round_trip(bits, rows, count, seed):
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 1 << bits, (rows, count), generator=gen, dtype=torch.int64).to(torch.int32)
    packed = bitpack.pack(codes, bits)
    assert packed.dtype == torch.uint8 and packed.shape == (rows, bitpack.packed_bytes(count, bits))
    assert torch.equal(bitpack.unpack(packed, bits, count), codes)


def test_little_end_first_layout():
    # Two INT4 codes per byte, low nibble first; 3-bit codes flow across byte edges LSB first.
    assert bitpack.pack(torch.tensor([[0x3, 0xA]]), 4).tolist() == [[0xA3]]
    assert bitpack.pack(torch.tensor([[0b101, 0b011, 0b110]]), 3).tolist() == [[0b10011101, 0b1]]


def test_trailing_bits_are_zero():
    packed = bitpack.pack(torch.full((1, 3), 7), 3)  # 9 bits into 2 bytes
    assert packed.tolist() == [[0xFF, 0x01]]
