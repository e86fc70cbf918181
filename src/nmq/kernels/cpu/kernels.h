// Shared declarations of the nmq CPU kernels: the two weight layouts, the
// prepared activations, and the tables of entry points each ISA level fills.
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace nmq {

// Patterns with a fast layout. Everything else runs on the canonical bytes.
enum Kind : int32_t { KIND_GENERIC = 0, KIND_24 = 1, KIND_48 = 2, KIND_14 = 3, KIND_DENSE = 4 };

constexpr int ROWS = 16;   // rows per row block: one int32/fp32 lane per row
constexpr int PAIR_K = 8;  // K covered by one pair-step (two 16x4 byte domains)
static_assert(ROWS * sizeof(int32_t) == 64, "the AVX-512 kernels hold a row block's sums in one register");
static_assert(PAIR_K == 2 * 4, "a pair-step is two domains of 4 K (one vpdpbusd each)");

// The fast layout (4-bit codes; 2:4, 4:8, 1:4, dense). Rows come in blocks of
// 16; K in pair-steps of 8, each pair-step made of two 16 rows x 4 K domains
// (A: K 0..3, B: K 4..7) of 64 byte positions, row-major inside a domain.
// Per pair-step: `vbytes` of packed codes (the kept codes of A then B, in
// domain order, byte b holding code b in its low nibble and code b + half in
// its high nibble) and `mbytes` of metadata (two 64-bit keep masks for 4:8,
// two 32-bit sets of 2-bit positions for 1:4, nothing when dense).
//
// 2:4 is laid out for gathering activations instead of scattering weights, and
// as compactly as the format's rank metadata (2.875 bits per weight with fp16
// scales of 128). A row keeps 4 codes per pair-step; in its 32-bit lane they
// sit in slot order 0, 2, 1, 3 (so the lane's two 16-bit words hold codes 0, 1
// and, shifted right by 8, codes 2, 3). Values, per row block 64 bytes for
// every two pair-steps (counted over all groups; an odd count ends with a
// zero step): byte 4 * row + slot holds that code of the first pair-step in
// its low nibble and of the second in its high one, so a 64-byte load is the
// row lanes of one pair-step and a 16-bit shift by 4 those of the next.
// Metadata, per row and
// pair-step 6 bits: the rank (0..5, colex) of the kept pair in 4-group A, then
// in B; per row block, quads of 4 pair-steps (48 bytes, global pair-step t in
// quad t / 4 at e = t % 4) hold row pair P's 48 bits at byte 6P, the field of
// row 2P + f at bit 12e + 6f. The buffer ends with 16 spare bytes.
constexpr int QUAD24 = 48;
static_assert(QUAD24 * 8 == 4 * ROWS * 6, "a quad: 4 pair-steps of 16 rows' 6-bit fields");
static_assert(4 * ROWS == 64, "2:4 values: one byte per row and kept code, two pair-steps to a 64-byte load");
static constexpr uint8_t PAIR24[8][2] = {{0, 1}, {0, 2}, {1, 2}, {0, 3}, {1, 3}, {2, 3}, {0, 1}, {0, 1}};
static const uint8_t SLOT_CODE[4] = {0, 2, 1, 3};  // slot -> kept code index j

// Bytes per pair-step and row block of each fast layout's codes and metadata
// (2:4 interleaves its pair-steps, see vals24_stride, but holds as many); the
// SIMD kernels load these sizes as compile-time constants.
constexpr int fast_vbytes(int kind) { return kind == KIND_DENSE ? 64 : kind == KIND_14 ? 16 : 32; }
constexpr int fast_mbytes(int kind) {
  return kind == KIND_DENSE ? 0 : kind == KIND_14 ? 8 : kind == KIND_24 ? 12 : 16;
}
static_assert(2 * fast_vbytes(KIND_DENSE) == ROWS * PAIR_K, "dense: all 8 codes of a row, two to a byte");
static_assert(2 * fast_vbytes(KIND_48) == ROWS * 4 && 2 * fast_vbytes(KIND_24) == ROWS * 4, "4:8, 2:4 keep 4 of 8");
static_assert(2 * fast_vbytes(KIND_14) == ROWS * 2, "1:4 keeps 2 of 8");
static_assert(fast_mbytes(KIND_48) == 2 * sizeof(uint64_t), "4:8: a 64-bit keep mask per 16x4 domain");
static_assert(fast_mbytes(KIND_14) == 2 * sizeof(uint32_t), "1:4: 16 rows' 2-bit positions per domain");
static_assert(8 * fast_mbytes(KIND_24) == ROWS * 6, "2:4: a 6-bit field per row");

// A fast layout's numbers, as prepack computes them. FastParams in
// nmq/backends/cpu/layout.py mirrors it field for field and hands it over by
// field name (tests/backends/cpu/test_layout.py compares names, sizes and
// offsets); the size asserted below is a reminder, when a field is added, to
// bind it (nmq_cpu.cpp) and mirror it.
struct FastParams {
  int32_t kind = 0;
  int32_t out = 0;          // logical rows
  int32_t blocks = 0;       // row blocks, ceil(out / 16)
  int32_t kk = 0;           // K the kernel runs over: padded_in rounded up to 8
  int32_t group = 0;        // quantization group length along K (multiple of 8)
  int32_t groups = 0;
  int32_t steps = 0;        // pair-steps per group
  int32_t vbytes = 0;       // fast_vbytes(kind)
  int32_t mbytes = 0;       // fast_mbytes(kind)
  int32_t in_features = 0;  // K of the activations, zero padded to kk
  bool symmetric = true;
};
static_assert(sizeof(FastParams) == 11 * sizeof(int32_t), "FastParams changed: update its binding and layout.py");
static_assert(std::is_trivially_copyable_v<FastParams>);

struct FastLayout : FastParams {
  const uint8_t* vals = nullptr;     // [blocks][groups][steps][vbytes]; 2:4: [blocks][vals24_stride]
  const uint8_t* meta = nullptr;     // [blocks][groups][steps][mbytes]; 2:4: [blocks][meta24_stride] + 16
  const uint16_t* scales = nullptr;  // fp16 [blocks][groups][16]
  const uint8_t* zeros = nullptr;    // [blocks][groups][8]: byte i = z[i] | z[i + 8] << 4
};
static_assert(std::is_trivially_copyable_v<FastLayout>);

// Bytes of one row block's 2:4 metadata.
static inline size_t meta24_stride(const FastLayout& L) {
  return size_t((L.groups * L.steps + 3) / 4) * QUAD24;
}

// Bytes of one row block's 2:4 values: 64 for every two pair-steps of all its groups.
static inline size_t vals24_stride(const FastLayout& L) {
  return size_t((L.groups * L.steps + 1) / 2) * 64;
}

// How the canonical bytes say which weights a row keeps.
enum MetaKind : int32_t { META_DENSE = 0, META_INDEX = 1, META_RANK = 2 };

// The canonical layout's patterns, widths and metadata: M up to the format's MAX_M.
constexpr int GENERIC_MAX_M = 16;
constexpr int GENERIC_MAX_BITS = 8;
constexpr int64_t choose(int n, int k) { return k == 0 ? 1 : choose(n - 1, k - 1) * n / k; }
constexpr int bits_for(int64_t count) { return count <= 1 ? 0 : 1 + bits_for((count + 1) / 2); }
// The widest metadata field: the rank of 8 kept of 16 (index fields take 4 bits).
constexpr int GENERIC_MAX_META_WIDTH = bits_for(choose(GENERIC_MAX_M, GENERIC_MAX_M / 2));
static_assert(GENERIC_MAX_META_WIDTH == 14);
// read_bits gathers 3 bytes from any bit offset: enough for any code or metadata field.
static_assert(GENERIC_MAX_META_WIDTH + 7 <= 24 && GENERIC_MAX_BITS + 7 <= 24);

// The numbers of the canonical NMQTensor bytes, mirrored like FastParams.
struct GenericParams {
  int32_t out = 0;
  int32_t in_features = 0;
  int32_t padded_in = 0;
  int32_t n = 0, m = 0;
  int32_t bits = 0;
  int32_t group = 0;
  int32_t groups = 0;
  int32_t meta_kind = META_DENSE;
  int32_t meta_width = 0;  // bits per metadata code
  bool symmetric = true;
};
static_assert(sizeof(GenericParams) == 11 * sizeof(int32_t), "GenericParams changed: update its binding and layout.py");
static_assert(std::is_trivially_copyable_v<GenericParams>);

// The canonical NMQTensor bytes, decoded row by row (any N:M, any width).
struct GenericLayout : GenericParams {
  const uint8_t* values = nullptr;
  int64_t vstride = 0;
  const uint8_t* meta = nullptr;
  int64_t mstride = 0;
  const uint16_t* scales = nullptr;  // fp16 [out][groups]
  const uint8_t* zeros = nullptr;    // packed like values, [out][zstride]
  int64_t zstride = 0;
  const uint8_t* table = nullptr;    // rank -> ascending positions [C(m, n)][n]
};
static_assert(std::is_trivially_copyable_v<GenericLayout>);

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
  // q + 128 as unsigned bytes, [tokens][kk]: for 2:4 on levels without a pair table.
  const uint8_t* qu = nullptr;
  // For levels with a pair_table24: per token and pair-step, the q + 128 of
  // every pair a 2:4 row can keep, [tokens][kk / 8][32]. Byte 2r + e is
  // element e of pair r (PAIR24) of K 0..3, byte 16 + 2r + e the same for K
  // 4..7; bytes 12..15 and 28..31 are never read.
  const uint8_t* pairs24 = nullptr;
};

struct ActF {
  int tokens = 0;
  int kk = 0;
  int groups = 0;
  int group = 0;
  const float* x = nullptr;     // [tokens][kk], zero padded
  const float* xsum = nullptr;  // [tokens][groups]
  const uint16_t* xb = nullptr; // bf16 activations [tokens][kk] when given in bf16, else null
};

// Attention of one new position over a KV cache (batch-1 decoding): per head
// h, softmax(scale * q_h . k_j) over positions j < length, then the weighted
// sum of v_j. Query heads share key/value head h / (heads / kv_heads).
struct Attn {
  int heads = 0, kv_heads = 0, length = 0, dim = 0;
  int64_t head_stride = 0;  // elements from one key/value head to the next; rows of dim are contiguous
  bool bf16 = false;        // k and v hold bf16 bits (else fp32)
  const float* q = nullptr; // [heads][dim]
  const void* k = nullptr;
  const void* v = nullptr;
  float scale = 1.f;
  void* out = nullptr;      // [heads][dim], fp32 (or the cache's dtype when out_narrow)
  bool out_narrow = false;
};

// Each ISA level's entry points, in three tables (matmul, decode step, Gram)
// that its translation unit fills by field name; a null entry is a kernel the
// level lacks.
struct MatmulOps {
  // Token range [t0, t1) of: quantize x [tokens][kk] (fp32, zero padded) into a.
  void (*quantize)(const float* x, int t0, int t1, const Act8& a) = nullptr;
  void (*group_sums)(const float* x, int t0, int t1, const ActF& a) = nullptr;
  // Row blocks [b0, b1) of the fast layout; y [tokens][out]; P optional
  // [tokens][out][groups].
  void (*fast_w4a8)(const FastLayout& L, const Act8& a, int b0, int b1, float* y, int32_t* P) = nullptr;
  void (*fast_w4a16)(const FastLayout& L, const ActF& a, int b0, int b1, float* y) = nullptr;
  // bf16 activations (a.xb) with bf16 dot products; null where the CPU lacks them.
  void (*fast_w4a16_bf16)(const FastLayout& L, const ActF& a, int b0, int b1, float* y) = nullptr;
  // Rows [r0, r1) of the canonical layout.
  void (*generic_w4a8)(const GenericLayout& L, const Act8& a, int r0, int r1, float* y, int32_t* P) = nullptr;
  void (*generic_w4a16)(const GenericLayout& L, const ActF& a, int r0, int r1, float* y) = nullptr;
  // Tokens [t0, t1) of a.pairs24 from a.q, written to out; null on levels
  // whose 2:4 kernels read a.qu instead.
  void (*pair_table24)(const Act8& a, int t0, int t1, uint8_t* out) = nullptr;
  // Row blocks [b0, b1) of 2:4 for many tokens: x transposed into tiles [tiles][kk][PREFILL_TILE] (zero padded
  // past the last token), y [tokens][out] fp32. Null on levels without it.
  void (*fast24_prefill)(const FastLayout& L, const float* xt, int tokens, int b0, int b1, float* y) = nullptr;
  // Its tiles: tokens [t0, t1) (whole tiles) of x [tokens][k] (fp32, or bf16 bits when bf16), zero padded.
  void (*prefill_tiles)(const void* x, bool bf16, int tokens, int k, int kk, int t0, int t1, float* xt) = nullptr;
  // Row blocks [b0, b1) (fast) or rows [r0, r1) (canonical) dequantized into fp32 w [out][kk or padded_in], for
  // calls with enough tokens that one dense GEMM beats the kernels.
  void (*fast_dequant)(const FastLayout& L, int b0, int b1, float* w) = nullptr;
  void (*generic_dequant)(const GenericLayout& L, int r0, int r1, float* w) = nullptr;
  // fp32 -> bf16 bits, rounded to nearest even as PyTorch's conversion (bf16 outputs).
  void (*to_bf16)(const float* src, uint16_t* dst, size_t n) = nullptr;
};

// The other decode step ops (decode_ops.h); values in the model's dtype, bf16 bits or fp32.
struct DecodeOps {
  // Heads [h0, h1) of a.
  void (*attend)(const Attn& a, int h0, int h1) = nullptr;
  void (*add_rms_norm)(void* h, const void* add, const void* w, void* out, int n, float eps, bool bf16) = nullptr;
  void (*rotate_heads)(const void* src, const void* cos, const void* sin, void* dst, int64_t stride, bool to_f32,
                       int heads, int dim, bool bf16) = nullptr;
  void (*silu_mul)(const void* g, const void* u, void* out, int n, bool bf16) = nullptr;
};

struct GramOps {
  // Column tiles [w0, w1) of c += X^T X for bf16 X packed by gram panels
  // (see gram_bf16 in kernels_avx512.cpp); null where the CPU lacks bf16 dot products.
  void (*gram_bf16)(const uint16_t* packed, int panels, int pairs, float* c, int64_t ldc, int w0, int w1) = nullptr;
};

// Tokens per tile of fast24_prefill's transposed activations.
constexpr int PREFILL_TILE = 32;

// Column tiles of gram_bf16: 3 panels of 16 features each.
constexpr int GRAM_TILE_PANELS = 3;

struct Level {
  const char* name = nullptr;
  MatmulOps matmul;
  DecodeOps decode;
  GramOps gram;
};

// Null where the build has no such level (not x86).
const Level* level_portable();
const Level* level_avx2();
const Level* level_avx512();

}  // namespace nmq
