// The AVX2 level (+FMA, F16C, BMI2). The 2:4 and dense fast layouts are
// written with intrinsics (both numeric paths), two 8-row halves per row
// block; W4A8 products go through vpmaddubsw + vpmaddwd (no saturation: a
// pair sums to at most 2 * 255 * 15). 1:4 pair-steps are built with byte
// compares, 4:8 ones in plain C++ (AVX2 has no byte expand); both then run
// like dense ones.
// Everything else is the plain C++ of kernels_impl.h, vectorized by the
// compiler under this unit's -mavx2 -mfma.
#define NMQ_NS avx2
#include "kernels_impl.h"

#if defined(NMQ_X86)
#include <immintrin.h>

#define NMQ_INLINE inline __attribute__((always_inline))

namespace nmq {
namespace avx2 {

static NMQ_INLINE uint64_t load64(const void* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

static NMQ_INLINE __m256i madd_u8s8(__m256i acc, __m256i u, __m256i s) {
  return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
}

// Zero codes of a row block's group: dwords (zd) and the same repeated in
// every byte of the row's dword (zf), rows 0..7 in [0], 8..15 in [1].
static NMQ_INLINE void zeros8(const FastLayout& L, size_t blk, __m256i zd[2], __m256i zf[2]) {
  if (L.symmetric) {
    zd[0] = zd[1] = _mm256_set1_epi32(8);
    zf[0] = zf[1] = _mm256_set1_epi8(8);
    return;
  }
  const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(L.zeros + blk * 8));
  zd[0] = _mm256_cvtepu8_epi32(_mm_and_si128(b, _mm_set1_epi8(15)));
  zd[1] = _mm256_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(b, 4), _mm_set1_epi8(15)));
  zf[0] = _mm256_mullo_epi32(zd[0], _mm256_set1_epi32(0x01010101));
  zf[1] = _mm256_mullo_epi32(zd[1], _mm256_set1_epi32(0x01010101));
}

// One 2:4 pair-step (layout in kernels.h: value bytes v, nibble half) as row
// lanes: codes in slot order (cw[0] rows 0..7, cw[1] rows 8..15) and, byte
// for byte, the K positions (0..7) they meet, from a 64-entry table of the
// 6-bit metadata fields.
static NMQ_INLINE void decode24(const uint8_t* v, int half, const uint8_t* quad, int e, __m256i cw[2], __m256i ix[2]) {
  alignas(32) static const struct Tables {
    uint32_t pos[64];
    Tables() {
      for (int f = 0; f < 64; ++f) {
        const int ra = f & 7, rb = f >> 3;
        pos[f] = uint32_t(PAIR24[ra][0]) | uint32_t(4 + PAIR24[rb][0]) << 8 | uint32_t(PAIR24[ra][1]) << 16 |
                 uint32_t(4 + PAIR24[rb][1]) << 24;
      }
    }
  } tab;
  const __m128i shift = _mm_cvtsi32_si128(4 * half);
#pragma GCC unroll 2
  for (int h = 0; h < 2; ++h) {
    const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(v + 32 * h));
    cw[h] = _mm256_and_si256(_mm256_srl_epi16(x, shift), _mm256_set1_epi8(15));
  }
  alignas(32) uint32_t idx[16];
  for (int p = 0; p < 8; ++p) {
    const uint64_t w = load64(quad + 6 * p) >> (12 * e);
    idx[2 * p] = tab.pos[w & 63];
    idx[2 * p + 1] = tab.pos[(w >> 6) & 63];
  }
  ix[0] = _mm256_load_si256(reinterpret_cast<const __m256i*>(idx));
  ix[1] = _mm256_load_si256(reinterpret_cast<const __m256i*>(idx + 8));
}

template <int KIND>
struct Geometry {
  static constexpr int VB = fast_vbytes(KIND), MB = fast_mbytes(KIND);
};

// The four 8-row x 4-K byte domains of a pair-step (A rows 0..7, A rows 8..15,
// B rows 0..7, B rows 8..15) of every layout but 2:4, dropped weights holding
// their row's zero code.
template <int KIND>
static NMQ_INLINE void domains(const uint8_t* vs, const uint8_t* ms, const uint8_t* z, __m256i d[4]) {
  const __m256i low = _mm256_set1_epi8(15);
  if constexpr (KIND == KIND_DENSE) {
    const __m256i c0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(vs));
    const __m256i c1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(vs + 32));
    d[0] = _mm256_and_si256(c0, low);
    d[1] = _mm256_and_si256(c1, low);
    d[2] = _mm256_and_si256(_mm256_srli_epi16(c0, 4), low);
    d[3] = _mm256_and_si256(_mm256_srli_epi16(c1, 4), low);
  } else if constexpr (KIND == KIND_14) {
    // Each row's one code goes to the byte its 2-bit position names, the
    // row's zero code to the other three.
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(vs));
    const __m128i codes[2] = {_mm_and_si128(v, _mm_set1_epi8(15)),
                              _mm_and_si128(_mm_srli_epi16(v, 4), _mm_set1_epi8(15))};
    const __m256i splat = _mm256_setr_epi8(0, 0, 0, 0, 4, 4, 4, 4, 8, 8, 8, 8, 12, 12, 12, 12, 0, 0, 0, 0, 4, 4, 4, 4,
                                           8, 8, 8, 8, 12, 12, 12, 12);
    const __m256i jpos = _mm256_set1_epi32(0x03020100);
    const __m256i zb = _mm256_shuffle_epi8(
        _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(z))), splat);
    const __m256i zb8 = _mm256_shuffle_epi8(
        _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(z + 8))), splat);
    for (int h = 0; h < 2; ++h) {
      uint32_t idx;
      std::memcpy(&idx, ms + 4 * h, 4);
      const __m256i bi = _mm256_set1_epi32(int(idx));
      for (int half = 0; half < 2; ++half) {
        const __m256i shifts = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
        const __m256i pos = _mm256_and_si256(
            _mm256_srlv_epi32(bi, _mm256_add_epi32(shifts, _mm256_set1_epi32(16 * half))), _mm256_set1_epi32(3));
        const __m128i c8 = half ? _mm_srli_si128(codes[h], 8) : codes[h];
        const __m256i c = _mm256_shuffle_epi8(_mm256_cvtepu8_epi32(c8), splat);
        const __m256i hit = _mm256_cmpeq_epi8(_mm256_shuffle_epi8(pos, splat), jpos);
        d[2 * h + half] = _mm256_blendv_epi8(half ? zb8 : zb, c, hit);
      }
    }
  } else {
    alignas(32) uint8_t w[128];
    decode_pair(KIND, vs, ms, z, w);
    for (int i = 0; i < 4; ++i) d[i] = _mm256_load_si256(reinterpret_cast<const __m256i*>(w + 32 * i));
  }
}

template <int KIND, int TT>
static void w4a8_tile(const FastLayout& L, const Act8& a, int b, int t0, float* y, int32_t* P) {
  constexpr int VB = Geometry<KIND>::VB, MB = Geometry<KIND>::MB;
  const int G = L.groups, S = L.steps;
  const __m256i low = _mm256_set1_epi8(15), ones = _mm256_set1_epi8(1);
  __m256 yv[TT][2];
#pragma GCC unroll 8
  for (int t = 0; t < TT; ++t) yv[t][0] = yv[t][1] = _mm256_setzero_ps();
  for (int g = 0; g < G; ++g) {
    const size_t blk = size_t(b) * G + g;
    const uint8_t* v = L.vals + blk * S * VB;
    const uint8_t* m = MB ? L.meta + blk * S * MB : nullptr;
    __m256i zd[2], zf[2];
    zeros8(L, blk, zd, zf);
    uint8_t z[ROWS];
    if constexpr (KIND == KIND_48 || KIND == KIND_14) block_zeros(L, blk, z);
    __m256i acc[TT][2], accw[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()};
#pragma GCC unroll 8
    for (int t = 0; t < TT; ++t) acc[t][0] = acc[t][1] = _mm256_setzero_si256();
    const int k0 = g * L.group;
    for (int s = 0; s < S; ++s) {
      const int k = k0 + s * 8;
      if constexpr (KIND == KIND_24) {
        const int t24 = g * S + s;
        __m256i c[2], ix[2];
        decode24(vals24(L, b, t24), t24 & 1, quad24_at(L, b, t24), t24 % 4, c, ix);
        const __m256i w0 = _mm256_sub_epi8(c[0], zf[0]);
        const __m256i w1 = _mm256_sub_epi8(c[1], zf[1]);
        const __m256i i0 = ix[0], i1 = ix[1];
        accw[0] = madd_u8s8(accw[0], ones, w0);
        accw[1] = madd_u8s8(accw[1], ones, w1);
#pragma GCC unroll 8
        for (int t = 0; t < TT; ++t) {
          const __m256i qv = _mm256_set1_epi64x(int64_t(load64(a.qu + size_t(t0 + t) * a.kk + k)));
          acc[t][0] = madd_u8s8(acc[t][0], _mm256_shuffle_epi8(qv, i0), w0);
          acc[t][1] = madd_u8s8(acc[t][1], _mm256_shuffle_epi8(qv, i1), w1);
        }
      } else {
        __m256i d[4];
        domains<KIND>(v + size_t(s) * VB, MB ? m + size_t(s) * MB : nullptr, z, d);
        const __m256i a0 = d[0], a1 = d[1], b0 = d[2], b1 = d[3];
#pragma GCC unroll 8
        for (int t = 0; t < TT; ++t) {
          const int8_t* q = a.q + size_t(t0 + t) * a.kk + k;
          int32_t qa, qb;
          std::memcpy(&qa, q, 4);
          std::memcpy(&qb, q + 4, 4);
          const __m256i va = _mm256_set1_epi32(qa), vb = _mm256_set1_epi32(qb);
          acc[t][0] = madd_u8s8(madd_u8s8(acc[t][0], a0, va), b0, vb);
          acc[t][1] = madd_u8s8(madd_u8s8(acc[t][1], a1, va), b1, vb);
        }
      }
    }
    const __m256 sw[2] = {_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(L.scales + blk * ROWS))),
                          _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(L.scales + blk * ROWS + 8)))};
#pragma GCC unroll 8
    for (int t = 0; t < TT; ++t) {
      const size_t tg = size_t(t0 + t) * G + g;
      const __m256 sx = _mm256_set1_ps(a.scale[tg]);
      for (int h = 0; h < 2; ++h) {
        __m256i p;
        if constexpr (KIND == KIND_24)
          p = _mm256_sub_epi32(acc[t][h], _mm256_slli_epi32(accw[h], 7));
        else
          p = _mm256_sub_epi32(acc[t][h], _mm256_mullo_epi32(zd[h], _mm256_set1_epi32(a.qsum[tg])));
        if (P) {
          alignas(32) int32_t tmp[8];
          _mm256_store_si256(reinterpret_cast<__m256i*>(tmp), p);
          const int rows = std::min(8, L.out - b * ROWS - 8 * h);
          for (int r = 0; r < rows; ++r) P[(size_t(t0 + t) * L.out + size_t(b) * ROWS + 8 * h + r) * G + g] = tmp[r];
        }
        // Same fp32 operations, in the same order, as the reference.
        yv[t][h] = _mm256_add_ps(yv[t][h], _mm256_mul_ps(_mm256_mul_ps(sw[h], sx), _mm256_cvtepi32_ps(p)));
      }
    }
  }
  const int rows = std::min(ROWS, L.out - b * ROWS);
#pragma GCC unroll 8
  for (int t = 0; t < TT; ++t) {
    alignas(32) float tmp[16];
    _mm256_store_ps(tmp, yv[t][0]);
    _mm256_store_ps(tmp + 8, yv[t][1]);
    std::memcpy(y + size_t(t0 + t) * L.out + size_t(b) * ROWS, tmp, sizeof(float) * rows);
  }
}

template <int KIND>
static void w4a8_kind(const FastLayout& L, const Act8& a, int b0, int b1, float* y, int32_t* P) {
  const int T = a.tokens;
  for (int b = b0; b < b1; ++b) {
    int t = 0;
    for (; t + 8 <= T; t += 8) w4a8_tile<KIND, 8>(L, a, b, t, y, P);
    if (T - t >= 4) w4a8_tile<KIND, 4>(L, a, b, t, y, P), t += 4;
    if (T - t >= 2) w4a8_tile<KIND, 2>(L, a, b, t, y, P), t += 2;
    if (T - t >= 1) w4a8_tile<KIND, 1>(L, a, b, t, y, P);
  }
}

static void fast_w4a8_simd(const FastLayout& L, const Act8& a, int b0, int b1, float* y, int32_t* P) {
  switch (L.kind) {
    case KIND_24: return w4a8_kind<KIND_24>(L, a, b0, b1, y, P);
    case KIND_48: return w4a8_kind<KIND_48>(L, a, b0, b1, y, P);
    case KIND_14: return w4a8_kind<KIND_14>(L, a, b0, b1, y, P);
    default: return w4a8_kind<KIND_DENSE>(L, a, b0, b1, y, P);
  }
}

// W4A16 on the 2:4 (gathered activations) and dense layouts, 8 rows per
// 256-bit half: code j of each row's dword becomes the float 2^23 + code
// (shift, mask, or 0x4B000000), and subtracting 2^23 + zero leaves code - zero
// exactly.
template <int KIND, int TT>
static void w4a16_tile(const FastLayout& L, const ActF& a, int b, int t0, float* y) {
  constexpr int VB = Geometry<KIND>::VB, MB = Geometry<KIND>::MB;
  const int G = L.groups, S = L.steps;
  const __m256i low = _mm256_set1_epi8(15), byte0 = _mm256_set1_epi32(0xFF);
  const __m256i magic = _mm256_set1_epi32(0x4B000000);
  __m256 yv[TT][2];
#pragma GCC unroll 8
  for (int t = 0; t < TT; ++t) yv[t][0] = yv[t][1] = _mm256_setzero_ps();
  for (int g = 0; g < G; ++g) {
    const size_t blk = size_t(b) * G + g;
    const uint8_t* v = L.vals + blk * S * VB;
    const uint8_t* m = MB ? L.meta + blk * S * MB : nullptr;
    __m256i zd[2], zf[2];
    zeros8(L, blk, zd, zf);
    uint8_t z[ROWS];
    if constexpr (KIND == KIND_48 || KIND == KIND_14) block_zeros(L, blk, z);
    const __m256 zoff[2] = {_mm256_castsi256_ps(_mm256_or_si256(zd[0], magic)),
                            _mm256_castsi256_ps(_mm256_or_si256(zd[1], magic))};
    __m256 acc[TT][2];
#pragma GCC unroll 8
    for (int t = 0; t < TT; ++t) acc[t][0] = acc[t][1] = _mm256_setzero_ps();
    const int k0 = g * L.group;
    for (int s = 0; s < S; ++s) {
      const int k = k0 + s * 8;
      // dwords of 4 codes per row: [half][A/B] (dense) or [half] (2:4)
      __m256i cw[2][2], ix[2];
      if constexpr (KIND == KIND_24) {
        const int t24 = g * S + s;
        __m256i c[2];
        decode24(vals24(L, b, t24), t24 & 1, quad24_at(L, b, t24), t24 % 4, c, ix);
        cw[0][0] = c[0];
        cw[1][0] = c[1];
      } else {
        __m256i d[4];
        domains<KIND>(v + size_t(s) * VB, MB ? m + size_t(s) * MB : nullptr, z, d);
        cw[0][0] = d[0];
        cw[1][0] = d[1];
        cw[0][1] = d[2];
        cw[1][1] = d[3];
      }
      __m256 xv[TT];
#pragma GCC unroll 8
      for (int t = 0; t < TT; ++t) xv[t] = _mm256_loadu_ps(a.x + size_t(t0 + t) * a.kk + k);
#pragma GCC unroll 2
      for (int h = 0; h < 2; ++h) {
#pragma GCC unroll 2
        for (int d = 0; d < (KIND == KIND_24 ? 1 : 2); ++d) {
#pragma GCC unroll 4
          for (int j = 0; j < 4; ++j) {
            const __m256i cj = _mm256_and_si256(_mm256_srli_epi32(cw[h][d], 8 * j), byte0);
            const __m256 wj = _mm256_sub_ps(_mm256_castsi256_ps(_mm256_or_si256(cj, magic)), zoff[h]);
#pragma GCC unroll 8
            for (int t = 0; t < TT; ++t) {
              __m256 xg;
              if constexpr (KIND == KIND_24)
                xg = _mm256_permutevar8x32_ps(xv[t], _mm256_srli_epi32(ix[h], 8 * j));
              else
                xg = _mm256_set1_ps(a.x[size_t(t0 + t) * a.kk + k + 4 * d + j]);
              acc[t][h] = _mm256_fmadd_ps(wj, xg, acc[t][h]);
            }
          }
        }
      }
    }
    const __m256 sw[2] = {_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(L.scales + blk * ROWS))),
                          _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(L.scales + blk * ROWS + 8)))};
#pragma GCC unroll 8
    for (int t = 0; t < TT; ++t)
      for (int h = 0; h < 2; ++h) yv[t][h] = _mm256_add_ps(yv[t][h], _mm256_mul_ps(sw[h], acc[t][h]));
  }
  const int rows = std::min(ROWS, L.out - b * ROWS);
#pragma GCC unroll 8
  for (int t = 0; t < TT; ++t) {
    alignas(32) float tmp[16];
    _mm256_store_ps(tmp, yv[t][0]);
    _mm256_store_ps(tmp + 8, yv[t][1]);
    std::memcpy(y + size_t(t0 + t) * L.out + size_t(b) * ROWS, tmp, sizeof(float) * rows);
  }
}

template <int KIND>
static void w4a16_kind(const FastLayout& L, const ActF& a, int b0, int b1, float* y) {
  const int T = a.tokens;
  for (int b = b0; b < b1; ++b) {
    int t = 0;
    for (; t + 4 <= T; t += 4) w4a16_tile<KIND, 4>(L, a, b, t, y);
    if (T - t >= 2) w4a16_tile<KIND, 2>(L, a, b, t, y), t += 2;
    if (T - t >= 1) w4a16_tile<KIND, 1>(L, a, b, t, y);
  }
}

static void fast_w4a16_simd(const FastLayout& L, const ActF& a, int b0, int b1, float* y) {
  switch (L.kind) {
    case KIND_24: return w4a16_kind<KIND_24>(L, a, b0, b1, y);
    case KIND_48: return w4a16_kind<KIND_48>(L, a, b0, b1, y);
    case KIND_14: return w4a16_kind<KIND_14>(L, a, b0, b1, y);
    default: return w4a16_kind<KIND_DENSE>(L, a, b0, b1, y);
  }
}

}  // namespace avx2

const Level* level_avx2() {
  static const Level level = [] {
    Level l;
    l.name = "avx2";
    l.matmul.quantize = avx2::quantize;
    l.matmul.group_sums = avx2::group_sums;
    l.matmul.fast_w4a8 = avx2::fast_w4a8_simd;
    l.matmul.fast_w4a16 = avx2::fast_w4a16_simd;
    l.matmul.generic_w4a8 = avx2::generic_w4a8;
    l.matmul.generic_w4a16 = avx2::generic_w4a16;
    l.matmul.fast_dequant = avx2::fast_dequant;
    l.matmul.generic_dequant = avx2::generic_dequant;
    l.matmul.to_bf16 = avx2::to_bf16_n;
    l.decode = avx2::decode_ops();
    return l;
  }();
  return &level;
}
}  // namespace nmq

#else
namespace nmq {
const Level* level_avx2() { return nullptr; }
}  // namespace nmq
#endif
