// Shared declarations of the nmq CPU kernels: the two weight layouts, the
// prepared activations, and the table of entry points each ISA level fills.
#pragma once

#include <cstddef>
#include <cstdint>

namespace nmq {

// Patterns with a fast layout. Everything else runs on the canonical bytes.
enum Kind : int { KIND_GENERIC = 0, KIND_24 = 1, KIND_48 = 2, KIND_14 = 3, KIND_DENSE = 4 };

constexpr int ROWS = 16;   // rows per row block: one int32/fp32 lane per row
constexpr int PAIR_K = 8;  // K covered by one pair-step (two 16x4 byte domains)

// The fast layout (4-bit codes; 2:4, 4:8, 1:4, dense). Rows come in blocks of
// 16; K in pair-steps of 8, each pair-step made of two 16 rows x 4 K domains
// (A: K 0..3, B: K 4..7) of 64 byte positions, row-major inside a domain.
// Per pair-step: `vbytes` of packed codes (the kept codes of A then B, in
// domain order, byte b holding code b in its low nibble and code b + half in
// its high nibble) and `mbytes` of metadata (two 64-bit keep masks for 4:8,
// two 32-bit sets of 2-bit positions for 1:4, nothing when dense).
// 2:4 is laid out for gathering activations instead of scattering weights:
// its 64 codes are the 4 kept codes of each row in the pair-step's 8 K (row
// r's in bytes 4r..4r+3 after unpacking), and its metadata is one byte per
// row holding their four 2-bit positions inside their 4-groups.
struct FastLayout {
  int kind = 0;
  int out = 0;        // logical rows
  int blocks = 0;     // row blocks, ceil(out / 16)
  int kk = 0;         // K the kernel runs over: padded_in rounded up to 8
  int group = 0;      // quantization group length along K (multiple of 8)
  int groups = 0;
  int steps = 0;      // pair-steps per group
  int vbytes = 0;
  int mbytes = 0;
  bool symmetric = true;
  const uint8_t* vals = nullptr;     // [blocks][groups][steps][vbytes]
  const uint8_t* meta = nullptr;     // [blocks][groups][steps][mbytes]
  const uint16_t* scales = nullptr;  // fp16 [blocks][groups][16]
  const uint8_t* zeros = nullptr;    // [blocks][groups][8]: byte i = z[i] | z[i + 8] << 4
};

// The canonical NMQTensor bytes, decoded row by row (any N:M, any width).
struct GenericLayout {
  int out = 0;
  int padded_in = 0;
  int n = 0, m = 0;
  int bits = 0;
  int group = 0;
  int groups = 0;
  int meta_kind = 0;   // 0 dense, 1 index, 2 rank
  int meta_width = 0;  // bits per metadata code
  bool symmetric = true;
  const uint8_t* values = nullptr;
  int64_t vstride = 0;
  const uint8_t* meta = nullptr;
  int64_t mstride = 0;
  const uint16_t* scales = nullptr;  // fp16 [out][groups]
  const uint8_t* zeros = nullptr;    // packed like values, [out][zstride]
  int64_t zstride = 0;
  const uint8_t* table = nullptr;    // rank -> ascending positions [C(m, n)][n]
};

// Activations quantized per (token, group): int8 codes, fp32 scales and the
// int32 sum of the codes of each group (used to remove the zero-point term).
struct Act8 {
  int tokens = 0;
  int kk = 0;  // row stride of q, multiple of the group
  int groups = 0;
  int group = 0;
  const int8_t* q = nullptr;     // [tokens][kk]
  const float* scale = nullptr;  // [tokens][groups]
  const int32_t* qsum = nullptr; // [tokens][groups]
  const uint8_t* qu = nullptr;   // q + 128 as unsigned bytes, [tokens][kk]
};

struct ActF {
  int tokens = 0;
  int kk = 0;
  int groups = 0;
  int group = 0;
  const float* x = nullptr;     // [tokens][kk], zero padded
  const float* xsum = nullptr;  // [tokens][groups]
};

struct Ops {
  const char* name;
  // Token range [t0, t1) of: quantize x [tokens][kk] (fp32, zero padded) into a.
  void (*quantize)(const float* x, int t0, int t1, const Act8& a);
  void (*group_sums)(const float* x, int t0, int t1, const ActF& a);
  // Row blocks [b0, b1) of the fast layout; y [tokens][out]; P optional
  // [tokens][out][groups].
  void (*fast_w4a8)(const FastLayout& L, const Act8& a, int b0, int b1, float* y, int32_t* P);
  void (*fast_w4a16)(const FastLayout& L, const ActF& a, int b0, int b1, float* y);
  // Rows [r0, r1) of the canonical layout.
  void (*generic_w4a8)(const GenericLayout& L, const Act8& a, int r0, int r1, float* y, int32_t* P);
  void (*generic_w4a16)(const GenericLayout& L, const ActF& a, int r0, int r1, float* y);
};

const Ops* ops_portable();
const Ops* ops_avx2();
const Ops* ops_avx512();

}  // namespace nmq
