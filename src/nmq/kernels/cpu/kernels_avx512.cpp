// The AVX-512 level (F, BW, VL, VNNI, VBMI, VBMI2; BF16 for one kernel, used
// only where the CPU has it).
//
// Fast layout kernels keep one int32 (W4A8) or fp32 (W4A16) lane per weight
// row, so no horizontal sums are needed. 2:4 gathers activations (see
// w4a8_tile24). For 4:8, 1:4 and dense, a pair-step's 4-bit codes are
// unpacked with one variable shift, scattered to their K positions with
// vpexpandb under the keep mask (merge-masked, so dropped positions hold the
// row's zero code), and
//  * W4A8: vpdpbusd against the token's 4 int8 activations broadcast to all
//    rows; sum((code - z) * q) = sum(code * q) - z * sum(q), the last sum
//    taken once per (token, group) when the activations are quantized;
//  * W4A16: each code is moved into byte 2 of an fp32 lane whose other bytes
//    come from 0x43000000, which is exactly the float 128 + code, then
//    FMA with the broadcast activation; 128 + z times the group's activation
//    sum is subtracted at the end of the group.
#define NMQ_NS avx512
#include "kernels_impl.h"

#if defined(NMQ_X86)
#include <immintrin.h>

#define NMQ_INLINE inline __attribute__((always_inline))

namespace nmq {
namespace avx512 {

template <int KIND>
struct Geometry {
  static_assert(KIND != KIND_24, "2:4 has its own walk (walk24)");
  static constexpr int VB = fast_vbytes(KIND), MB = fast_mbytes(KIND);
};

static NMQ_INLINE uint64_t load64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}
static NMQ_INLINE uint32_t load32(const void* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// acc += w (u8) . the 4 int8 at p, broadcast to every lane. GCC does not fold
// the broadcast into vpdpbusd by itself; a separate vpbroadcastd costs a uop.
static NMQ_INLINE __m512i dpbusd_bcast(__m512i acc, __m512i w, const int8_t* p) {
  __asm__("vpdpbusd %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(w), "m"(*reinterpret_cast<const int32_t*>(p)));
  return acc;
}

// 32 bytes -> 64 codes: byte b holds code b (low nibble) and code b + 32.
static NMQ_INLINE __m512i unpack64(const uint8_t* v) {
  __m512i b = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(v)));
  b = _mm512_srlv_epi64(b, _mm512_set_epi64(4, 4, 4, 4, 0, 0, 0, 0));
  return _mm512_and_si512(b, _mm512_set1_epi8(0x0F));
}

// 16 bytes -> 32 codes.
static NMQ_INLINE __m256i unpack32(const uint8_t* v) {
  __m256i b = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(v)));
  b = _mm256_srlv_epi64(b, _mm256_set_epi64x(4, 4, 0, 0));
  return _mm256_and_si256(b, _mm256_set1_epi8(0x0F));
}

// Keep masks of a 1:4 pair-step from its two sets of 16 two-bit positions:
// every byte (row r, K j) of a domain picks its row's position with
// vpmultishiftqb and compares it with j.
static NMQ_INLINE void masks14(const uint8_t* m, __mmask64& ka, __mmask64& kb) {
  alignas(64) static const struct Tables {
    uint8_t ctl_a[64], ctl_b[64], pos[64];
    Tables() {
      for (int p = 0; p < 64; ++p) {
        ctl_a[p] = uint8_t(2 * (p >> 2));
        ctl_b[p] = uint8_t(32 + 2 * (p >> 2));
        pos[p] = uint8_t(p & 3);
      }
    }
  } tab;
  const __m512i ix = _mm512_set1_epi64(int64_t(load64(m)));
  const __m512i three = _mm512_set1_epi8(3);
  const __m512i pos = _mm512_load_si512(tab.pos);
  ka = _mm512_cmpeq_epi8_mask(_mm512_and_si512(_mm512_multishift_epi64_epi8(_mm512_load_si512(tab.ctl_a), ix), three), pos);
  kb = _mm512_cmpeq_epi8_mask(_mm512_and_si512(_mm512_multishift_epi64_epi8(_mm512_load_si512(tab.ctl_b), ix), three), pos);
}

template <int KIND>
static NMQ_INLINE void decode(const uint8_t* v, const uint8_t* m, __m512i zf, __m512i& A, __m512i& B) {
  if constexpr (KIND == KIND_48) {
    __m512i c = unpack64(v);
    uint64_t ma = load64(m);
    A = _mm512_mask_expand_epi8(zf, ma, c);
    // B's codes start after A's, wherever that is.
    __m512i idx = _mm512_add_epi8(
        _mm512_set_epi8(63, 62, 61, 60, 59, 58, 57, 56, 55, 54, 53, 52, 51, 50, 49, 48, 47, 46, 45, 44, 43, 42, 41,
                        40, 39, 38, 37, 36, 35, 34, 33, 32, 31, 30, 29, 28, 27, 26, 25, 24, 23, 22, 21, 20, 19, 18,
                        17, 16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
        _mm512_set1_epi8(char(_mm_popcnt_u64(ma))));
    B = _mm512_mask_expand_epi8(zf, load64(m + 8), _mm512_permutexvar_epi8(idx, c));
  } else if constexpr (KIND == KIND_14) {
    __m256i c = unpack32(v);
    __mmask64 ka, kb;
    masks14(m, ka, kb);
    A = _mm512_mask_expand_epi8(zf, ka, _mm512_castsi256_si512(c));
    B = _mm512_mask_expand_epi8(zf, kb, _mm512_castsi128_si512(_mm256_extracti128_si256(c, 1)));
  } else {
    __m512i b = _mm512_loadu_si512(v);
    A = _mm512_and_si512(b, _mm512_set1_epi8(0x0F));
    B = _mm512_and_si512(_mm512_srli_epi16(b, 4), _mm512_set1_epi8(0x0F));
  }
}

static NMQ_INLINE void zero_vectors(const FastLayout& L, size_t blk, __m512i& zd, __m512i& zf) {
  if (L.symmetric) {
    zd = _mm512_set1_epi32(8);
    zf = _mm512_set1_epi8(8);
    return;
  }
  __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(L.zeros + blk * 8));
  __m128i lo = _mm_and_si128(b, _mm_set1_epi8(15));
  __m128i hi = _mm_and_si128(_mm_srli_epi16(b, 4), _mm_set1_epi8(15));
  zd = _mm512_cvtepu8_epi32(_mm_unpacklo_epi64(lo, hi));
  zf = _mm512_mullo_epi32(zd, _mm512_set1_epi32(0x01010101));
}

static NMQ_INLINE __mmask16 row_mask(const FastLayout& L, int b) {
  int rows = std::min(ROWS, L.out - b * ROWS);
  return rows >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << rows) - 1u);
}

// End of a (row block, group) on the W4A8 path for token t: the exact partial
// sums go to P when asked, and s_w * s_x * P is what to add to the output
// (the same fp32 operations, in the same order, as the reference).
static NMQ_INLINE __m512 w4a8_group_end(const FastLayout& L, const Act8& a, int b, int t, int g, __m512i p,
                                        __m512 sw, int32_t* P) {
  const size_t tg = size_t(t) * L.groups + g;
  if (P) {
    alignas(64) int32_t tmp[16];
    _mm512_store_si512(tmp, p);
    const int rows = std::min(ROWS, L.out - b * ROWS);
    for (int r = 0; r < rows; ++r) P[(size_t(t) * L.out + size_t(b) * ROWS + r) * L.groups + g] = tmp[r];
  }
  return _mm512_mul_ps(_mm512_mul_ps(sw, _mm512_set1_ps(a.scale[tg])), _mm512_cvtepi32_ps(p));
}

// tile(tokens-per-tile, first token) over [0, T) in tiles of 8, then 4, 2, 1.
template <typename Tile>
static NMQ_INLINE void by_token_tiles(int T, Tile&& tile) {
  int t = 0;
  for (; t + 8 <= T; t += 8) tile(std::integral_constant<int, 8>{}, t);
  if (T - t >= 4) tile(std::integral_constant<int, 4>{}, t), t += 4;
  if (T - t >= 2) tile(std::integral_constant<int, 2>{}, t), t += 2;
  if (T - t >= 1) tile(std::integral_constant<int, 1>{}, t);
}

// The activation quantizer of kernels_impl.h, 16 lanes at a time with the
// very same fp32 operations (true division, round half to even, clamp), so
// the codes are identical; max and integer sums do not depend on order.
static void quantize16(const float* x, int t0, int t1, const Act8& a) {
  for (int t = t0; t < t1; ++t) {
    const float* xr = x + size_t(t) * a.kk;
    int8_t* qr = const_cast<int8_t*>(a.q) + size_t(t) * a.kk;
    for (int g = 0; g < a.groups; ++g) {
      const float* xg = xr + size_t(g) * a.group;
      __m512 amax = _mm512_setzero_ps();
      for (int k = 0; k < a.group; k += 16) {
        const __mmask16 m = a.group - k >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (a.group - k)) - 1u);
        amax = _mm512_max_ps(amax, _mm512_abs_ps(_mm512_maskz_loadu_ps(m, xg + k)));
      }
      const float scale = _mm512_reduce_max_ps(amax) / 127.0f;
      const __m512 div = _mm512_set1_ps(scale == 0.f ? 1.f : scale);
      __m512i sum = _mm512_setzero_si512();
      for (int k = 0; k < a.group; k += 16) {
        const __mmask16 m = a.group - k >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (a.group - k)) - 1u);
        __m512 r = _mm512_roundscale_ps(_mm512_div_ps(_mm512_maskz_loadu_ps(m, xg + k), div),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        r = _mm512_min_ps(_mm512_set1_ps(127.f), _mm512_max_ps(_mm512_set1_ps(-127.f), r));
        const __m512i q = _mm512_cvtps_epi32(r);
        sum = _mm512_add_epi32(sum, q);
        _mm_mask_storeu_epi8(qr + size_t(g) * a.group + k, m, _mm512_cvtepi32_epi8(q));
      }
      const_cast<float*>(a.scale)[size_t(t) * a.groups + g] = scale;
      const_cast<int32_t*>(a.qsum)[size_t(t) * a.groups + g] = _mm512_reduce_add_epi32(sum);
    }
  }
}

constexpr int PF_FAST = 3072;  // prefetch distance (bytes) of the 4:8, 1:4 and dense value streams

template <int KIND, int TT>
static void w4a8_tile(const FastLayout& L, const Act8& a, int b, int t0, float* y, int32_t* P) {
  constexpr int VB = Geometry<KIND>::VB, MB = Geometry<KIND>::MB;
  // One token has too few independent dot products to hide vpdpbusd latency.
  constexpr int NC = TT == 1 ? 4 : 2;
  const int G = L.groups, S = L.steps;
  const int8_t* qb[TT];
  __m512 yv[TT];
#pragma GCC unroll 8
  for (int t = 0; t < TT; ++t) {
    qb[t] = a.q + size_t(t0 + t) * a.kk;
    yv[t] = _mm512_setzero_ps();
  }
  for (int g = 0; g < G; ++g) {
    const size_t blk = size_t(b) * G + g;
    const uint8_t* v = L.vals + blk * S * VB;
    const uint8_t* m = L.meta + blk * S * MB;
    __m512i zd, zf;
    zero_vectors(L, blk, zd, zf);
    __m512i acc[TT][NC];
#pragma GCC unroll 8
    for (int t = 0; t < TT; ++t)
#pragma GCC unroll 4
      for (int c = 0; c < NC; ++c) acc[t][c] = _mm512_setzero_si512();
    const int k0 = g * L.group;
    auto step = [&](int s, auto cc) __attribute__((always_inline)) {
      constexpr int c = decltype(cc)::value;
      __m512i A, B;
      decode<KIND>(v + size_t(s) * VB, m + size_t(s) * MB, zf, A, B);
      const int k = k0 + s * 8;
#pragma GCC unroll 8
      for (int t = 0; t < TT; ++t) {
        acc[t][c] = dpbusd_bcast(acc[t][c], A, qb[t] + k);
        acc[t][c + 1] = dpbusd_bcast(acc[t][c + 1], B, qb[t] + k + 4);
      }
    };
    int s = 0;
    if constexpr (NC == 4) {
      for (; s + 1 < S; s += 2) {
        // Every cache line of the two steps ahead (dense steps are a line each).
        for (int l = 0; l < 2 * VB; l += 64)
          _mm_prefetch(reinterpret_cast<const char*>(v + size_t(s) * VB + PF_FAST + l), _MM_HINT_T0);
        if constexpr (MB > 0) _mm_prefetch(reinterpret_cast<const char*>(m + size_t(s) * MB + PF_FAST / 2), _MM_HINT_T0);
        step(s, std::integral_constant<int, 0>{});
        step(s + 1, std::integral_constant<int, 2>{});
      }
    }
    for (; s < S; ++s) step(s, std::integral_constant<int, 0>{});
    const __m512 sw = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(L.scales + blk * ROWS)));
#pragma GCC unroll 8
    for (int t = 0; t < TT; ++t) {
      __m512i p = _mm512_add_epi32(acc[t][0], acc[t][1]);
      if constexpr (NC == 4) p = _mm512_add_epi32(p, _mm512_add_epi32(acc[t][2], acc[t][3]));
      p = _mm512_sub_epi32(p, _mm512_mullo_epi32(zd, _mm512_set1_epi32(a.qsum[size_t(t0 + t) * G + g])));
      yv[t] = _mm512_add_ps(yv[t], w4a8_group_end(L, a, b, t0 + t, g, p, sw, P));
    }
  }
  const __mmask16 rm = row_mask(L, b);
#pragma GCC unroll 8
  for (int t = 0; t < TT; ++t) _mm512_mask_storeu_ps(y + size_t(t0 + t) * L.out + size_t(b) * ROWS, rm, yv[t]);
}

template <int KIND, int TT>
static void w4a16_tile(const FastLayout& L, const ActF& a, int b, int t0, float* y) {
  constexpr int VB = Geometry<KIND>::VB, MB = Geometry<KIND>::MB;
  constexpr int NC = TT == 1 ? 8 : 2;
  const __m512i c43 = _mm512_set1_epi32(0x43000000);
  const __m512i byte2 = _mm512_set1_epi32(0x00FF0000);
  const int G = L.groups, S = L.steps;
  const float* xb[TT];
  __m512 yv[TT];
#pragma GCC unroll 8
  for (int t = 0; t < TT; ++t) {
    xb[t] = a.x + size_t(t0 + t) * a.kk;
    yv[t] = _mm512_setzero_ps();
  }
  for (int g = 0; g < G; ++g) {
    const size_t blk = size_t(b) * G + g;
    const uint8_t* v = L.vals + blk * S * VB;
    const uint8_t* m = L.meta + blk * S * MB;
    __m512i zd, zf;
    zero_vectors(L, blk, zd, zf);
    __m512 acc[TT][NC];
#pragma GCC unroll 8
    for (int t = 0; t < TT; ++t)
#pragma GCC unroll 8
      for (int c = 0; c < NC; ++c) acc[t][c] = _mm512_setzero_ps();
    const int k0 = g * L.group;
    for (int s = 0; s < S; ++s) {
      __m512i W[2];
      decode<KIND>(v + size_t(s) * VB, m + size_t(s) * MB, zf, W[0], W[1]);
      const int k = k0 + s * 8;
#pragma GCC unroll 2
      for (int h = 0; h < 2; ++h) {
        // Shifts and one ternary-logic op per code move byte j of every row's
        // dword to byte 2 under 0x43: plain ALU work, where byte shuffles would
        // queue behind vpexpandb on the shuffle unit.
        const __m512i Wh = W[h];
        __m512 w0 = _mm512_castsi512_ps(_mm512_ternarylogic_epi32(_mm512_slli_epi32(Wh, 16), byte2, c43, 0xEA));
        __m512 w1 = _mm512_castsi512_ps(_mm512_ternarylogic_epi32(_mm512_slli_epi32(Wh, 8), byte2, c43, 0xEA));
        __m512 w2 = _mm512_castsi512_ps(_mm512_ternarylogic_epi32(Wh, byte2, c43, 0xEA));
        __m512 w3 = _mm512_castsi512_ps(_mm512_ternarylogic_epi32(_mm512_srli_epi32(Wh, 8), byte2, c43, 0xEA));
#pragma GCC unroll 8
        for (int t = 0; t < TT; ++t) {
          const float* x = xb[t] + k + 4 * h;
          if constexpr (NC == 8) {
            acc[t][4 * h + 0] = _mm512_fmadd_ps(w0, _mm512_set1_ps(x[0]), acc[t][4 * h + 0]);
            acc[t][4 * h + 1] = _mm512_fmadd_ps(w1, _mm512_set1_ps(x[1]), acc[t][4 * h + 1]);
            acc[t][4 * h + 2] = _mm512_fmadd_ps(w2, _mm512_set1_ps(x[2]), acc[t][4 * h + 2]);
            acc[t][4 * h + 3] = _mm512_fmadd_ps(w3, _mm512_set1_ps(x[3]), acc[t][4 * h + 3]);
          } else {
            __m512 u = _mm512_fmadd_ps(w0, _mm512_set1_ps(x[0]), acc[t][h]);
            __m512 u2 = _mm512_mul_ps(w1, _mm512_set1_ps(x[1]));
            u2 = _mm512_fmadd_ps(w2, _mm512_set1_ps(x[2]), u2);
            u2 = _mm512_fmadd_ps(w3, _mm512_set1_ps(x[3]), u2);
            acc[t][h] = _mm512_add_ps(u, u2);
          }
        }
      }
    }
    const __m512 sw = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(L.scales + blk * ROWS)));
    const __m512 zoff = _mm512_cvtepi32_ps(_mm512_add_epi32(zd, _mm512_set1_epi32(128)));
#pragma GCC unroll 8
    for (int t = 0; t < TT; ++t) {
      __m512 r = acc[t][0];
#pragma GCC unroll 8
      for (int c = 1; c < NC; ++c) r = _mm512_add_ps(r, acc[t][c]);
      r = _mm512_sub_ps(r, _mm512_mul_ps(zoff, _mm512_set1_ps(a.xsum[size_t(t0 + t) * G + g])));
      yv[t] = _mm512_add_ps(yv[t], _mm512_mul_ps(sw, r));
    }
  }
  const __mmask16 rm = row_mask(L, b);
#pragma GCC unroll 8
  for (int t = 0; t < TT; ++t) _mm512_mask_storeu_ps(y + size_t(t0 + t) * L.out + size_t(b) * ROWS, rm, yv[t]);
}

// 2:4 gathers activations: each row keeps 4 of the pair-step's 8 K, so one
// byte or word shuffle per token fetches the 4 activations its codes meet, and
// the dot products skip the dropped weights. One vpmultishiftqb spreads the
// packed codes into row lanes; the metadata of a quad of pair-steps is moved
// into place once (row pair P's 48 bits to qword P), after which one
// vpmultishiftqb per pair-step picks each slot's 3-bit rank. W4A8 then looks
// the activation up directly in the token's pair table (Act8::pairs24) with
// rank and slot as the index; the float kernels turn rank and slot into the K
// position with one more vpermb (layout in kernels.h).
// Built at compile time (constexpr): a constructor run when the module loads
// would execute this unit's AVX-512 code on CPUs that lack it.
struct alignas(64) Tab24 {
  uint8_t meta_perm[64] = {}, meta_ctl[4][64] = {}, slot_or[64] = {}, lut[64] = {};
  uint8_t pair_ctl[4][64] = {}, pair_or[64] = {}, table_ctl[64] = {};
  constexpr Tab24() {
    for (int i = 0; i < 64; ++i) {
      const int row = i / 4, slot = i % 4, q = row / 2;
      meta_perm[i] = uint8_t(i % 8 < 6 ? 6 * (i / 8) + i % 8 : 0);
      for (int e = 0; e < 4; ++e) {
        meta_ctl[e][i] = uint8_t(12 * e + 6 * (row & 1) + 3 * (slot & 1));
        // One bit lower (mod 64: vpmultishiftqb rotates), so the rank lands in bits 1..3.
        pair_ctl[e][i] = uint8_t((meta_ctl[e][i] + 63) % 64);
      }
      slot_or[i] = uint8_t(8 * slot);
      // Slot s holds code j = SLOT_CODE[s]: 4-group A for j < 2, element j % 2 of the pair.
      pair_or[i] = uint8_t(16 * (slot & 1) + (slot >> 1));
      const int ls = i / 8, rank = i % 8;
      lut[i] = i < 32 ? uint8_t(4 * (ls & 1) + PAIR24[rank][ls >> 1]) : 0;
      const int step = i / 32, b = i % 32, r = (b % 16) / 2;
      table_ctl[i] = uint8_t(r < 6 ? 8 * step + 4 * (b / 16) + PAIR24[r][b % 2] : 0);
    }
  }
};
static constexpr Tab24 tab24{};

static NMQ_INLINE __m512i ld(const uint8_t* p) { return _mm512_load_si512(p); }

// Row lanes of a pair-step's codes, each byte's low nibble the code of its slot.
static NMQ_INLINE __m512i quad24(const uint8_t* q) {
  return _mm512_permutexvar_epi8(ld(tab24.meta_perm), _mm512_maskz_loadu_epi8(0x0000FFFFFFFFFFFFull, q));
}

// Byte slot of row r's lane: its byte in a pair-step's pair table (32 bytes).
static NMQ_INLINE __m512i pair_index24(__m512i quad, int e) {
  const __m512i f = _mm512_multishift_epi64_epi8(ld(tab24.pair_ctl[e]), quad);
  return _mm512_ternarylogic_epi32(f, _mm512_set1_epi8(0x0E), ld(tab24.pair_or), 0xEA);
}

// Tokens [t0, t1) of the pair tables: one vpermb per two pair-steps.
static void pair_table24(const Act8& a, int t0, int t1, uint8_t* out) {
  const int steps = a.kk / PAIR_K;
  const __m512i ctl = ld(tab24.table_ctl), flip = _mm512_set1_epi8(char(0x80));
  for (int t = t0; t < t1; ++t) {
    const int8_t* q = a.q + size_t(t) * a.kk;
    uint8_t* o = out + size_t(t) * steps * 32;
    int s = 0;
    for (; s + 2 <= steps; s += 2) {
      const __m512i src = _mm512_castsi128_si512(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q + 8 * s)));
      _mm512_storeu_si512(o + 32 * s, _mm512_xor_si512(_mm512_permutexvar_epi8(ctl, src), flip));
    }
    if (s < steps) {
      const __m512i src = _mm512_castsi128_si512(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + 8 * s)));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + 32 * s),
                          _mm512_castsi512_si256(_mm512_xor_si512(_mm512_permutexvar_epi8(ctl, src), flip)));
    }
  }
}

// Byte slot of row r's lane: the K position (0..7) of that code.
static NMQ_INLINE __m512i index24(__m512i quad, int e) {
  const __m512i f = _mm512_multishift_epi64_epi8(ld(tab24.meta_ctl[e]), quad);
  return _mm512_permutexvar_epi8(_mm512_ternarylogic_epi32(f, _mm512_set1_epi8(7), ld(tab24.slot_or), 0xEA),
                                 ld(tab24.lut));
}


constexpr int PF_VALS = 4096, PF_META = 1536;  // prefetch distances (bytes) of the 2:4 streams

// Walks the pair-steps of one row block and group: fn(parity, k, codes,
// quad, e) per pair-step, codes holding its codes in each byte's low nibble
// (the high nibble is another code), quad its metadata quad and e the step's
// place in it; the parity of the step is a compile-time constant
// (accumulators alternate with it). When a group is whole quads (groups of a
// multiple of 32), e is a compile-time constant too and the loop runs quad by
// quad: no per-step bookkeeping, which at ~9 vector instructions a step would
// otherwise hold the front end back.
template <typename Fn>
static NMQ_INLINE void walk24(const FastLayout& L, int b, int g, Fn&& fn) {
  using std::integral_constant;
  const int S = L.steps;
  const int t0 = g * S, k0 = g * L.group;
  const __m512i* v = reinterpret_cast<const __m512i*>(vals24(L, b, t0));
  const uint8_t* m = quad24_at(L, b, t0);
  if (S % 4 == 0) {
    // Two pair-steps per 64 bytes: the first's codes in the low nibbles, the
    // second's after one shift (the kernels read only each byte's low nibble).
    for (int s = 0; s < S; s += 4, m += QUAD24, v += 2) {
      const __m512i quad = quad24(m);
      _mm_prefetch(reinterpret_cast<const char*>(m) + PF_META, _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(v) + PF_VALS, _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(v) + PF_VALS + 64, _MM_HINT_T0);
      const __m512i c01 = _mm512_loadu_si512(v), c23 = _mm512_loadu_si512(v + 1);
      const int k = k0 + s * 8;
      fn(integral_constant<int, 0>{}, k, c01, quad, integral_constant<int, 0>{});
      fn(integral_constant<int, 1>{}, k + 8, _mm512_srli_epi16(c01, 4), quad, integral_constant<int, 1>{});
      fn(integral_constant<int, 0>{}, k + 16, c23, quad, integral_constant<int, 2>{});
      fn(integral_constant<int, 1>{}, k + 24, _mm512_srli_epi16(c23, 4), quad, integral_constant<int, 3>{});
    }
    return;
  }
  auto step = [&](int s, auto parity) __attribute__((always_inline)) {
    const int t = t0 + s;
    if (s == 0 || (t & 3) == 0) _mm_prefetch(reinterpret_cast<const char*>(quad24_at(L, b, t)) + PF_META, _MM_HINT_T0);
    const __m512i c = _mm512_loadu_si512(vals24(L, b, t));
    fn(parity, k0 + s * 8, (t & 1) ? _mm512_srli_epi16(c, 4) : c, quad24(quad24_at(L, b, t)), t & 3);
  };
  int s = 0;
  for (; s + 1 < S; s += 2) {
    _mm_prefetch(reinterpret_cast<const char*>(vals24(L, b, t0 + s)) + PF_VALS, _MM_HINT_T0);
    step(s, integral_constant<int, 0>{});
    step(s + 1, integral_constant<int, 1>{});
  }
  if (s < S) step(s, integral_constant<int, 0>{});
}

// W4A8: the weights are centered first (code - zero, signed) and the
// activations, looked up in the pair table, are unsigned (q + 128), so
//   sum((q + 128) * w) - 128 * sum(w) = sum(q * w),
// with sum(w) a per-row dot product with ones that serves every token.
template <int TT>
static void w4a8_tile24(const FastLayout& L, const Act8& a, int b, int t0, float* y, int32_t* P) {
  constexpr int NC = TT == 1 ? 2 : 1;
  const int G = L.groups;
  const __m512i ones = _mm512_set1_epi8(1), low = _mm512_set1_epi8(0x0F);
  const uint8_t* qb[TT];
  __m512 yv[TT];
#pragma GCC unroll 8
  for (int t = 0; t < TT; ++t) {
    qb[t] = a.pairs24 + size_t(t0 + t) * a.kk * 4;  // 32 bytes per 8 K
    yv[t] = _mm512_setzero_ps();
  }
  for (int g = 0; g < G; ++g) {
    const size_t blk = size_t(b) * G + g;
    __m512i zd, zf;
    zero_vectors(L, blk, zd, zf);
    __m512i acc[TT][NC], accw[NC];
#pragma GCC unroll 2
    for (int c = 0; c < NC; ++c) {
      accw[c] = _mm512_setzero_si512();
#pragma GCC unroll 8
      for (int t = 0; t < TT; ++t) acc[t][c] = _mm512_setzero_si512();
    }
    walk24(L, b, g, [&](auto parity, int k, __m512i codes, __m512i quad, auto e) __attribute__((always_inline)) {
      constexpr int c = NC == 2 ? decltype(parity)::value : 0;
      const __m512i w = _mm512_sub_epi8(_mm512_and_si512(codes, low), zf);
      const __m512i idx = pair_index24(quad, e);
      accw[c] = _mm512_dpbusd_epi32(accw[c], ones, w);
#pragma GCC unroll 8
      for (int t = 0; t < TT; ++t) {
        // Only the low 32 bytes are indexed (bit 5 of idx is clear).
        const __m512i table = _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(qb[t] + 4 * k)));
        acc[t][c] = _mm512_dpbusd_epi32(acc[t][c], _mm512_permutexvar_epi8(idx, table), w);
      }
    });
    __m512i wsum = accw[0];
    if constexpr (NC == 2) wsum = _mm512_add_epi32(wsum, accw[1]);
    const __m512i corr = _mm512_slli_epi32(wsum, 7);
    const __m512 sw = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(L.scales + blk * ROWS)));
#pragma GCC unroll 8
    for (int t = 0; t < TT; ++t) {
      __m512i p = acc[t][0];
      if constexpr (NC == 2) p = _mm512_add_epi32(p, acc[t][1]);
      p = _mm512_sub_epi32(p, corr);
      yv[t] = _mm512_add_ps(yv[t], w4a8_group_end(L, a, b, t0 + t, g, p, sw, P));
    }
  }
  const __mmask16 rm = row_mask(L, b);
#pragma GCC unroll 8
  for (int t = 0; t < TT; ++t) _mm512_mask_storeu_ps(y + size_t(t0 + t) * L.out + size_t(b) * ROWS, rm, yv[t]);
}

// W4A16, fp32 activations: code j of every row becomes the float 128 + code
// (shift, then one ternary-logic op under 0x43000000), minus 128 + zero gives
// code - zero exactly, and vpermps fetches the activation each row's code j
// meets.
template <int TT>
static void w4a16_tile24(const FastLayout& L, const ActF& a, int b, int t0, float* y) {
  constexpr int NC = TT == 1 ? 4 : 1;
  const int G = L.groups;
  const __m512i c43 = _mm512_set1_epi32(0x43000000);
  const __m512i nib2 = _mm512_set1_epi32(0x000F0000);
  const float* xb[TT];
  __m512 yv[TT];
#pragma GCC unroll 8
  for (int t = 0; t < TT; ++t) {
    xb[t] = a.x + size_t(t0 + t) * a.kk;
    yv[t] = _mm512_setzero_ps();
  }
  for (int g = 0; g < G; ++g) {
    const size_t blk = size_t(b) * G + g;
    __m512i zd, zf;
    zero_vectors(L, blk, zd, zf);
    const __m512 zoff = _mm512_cvtepi32_ps(_mm512_add_epi32(zd, _mm512_set1_epi32(128)));
    __m512 acc[TT][NC];
#pragma GCC unroll 8
    for (int t = 0; t < TT; ++t)
#pragma GCC unroll 4
      for (int c = 0; c < NC; ++c) acc[t][c] = _mm512_setzero_ps();
    walk24(L, b, g, [&](auto, int k, __m512i codes, __m512i quad, auto e) __attribute__((always_inline)) {
      const __m512i idx = index24(quad, e);
      const __m512i cj[4] = {_mm512_slli_epi32(codes, 16), _mm512_slli_epi32(codes, 8), codes,
                             _mm512_srli_epi32(codes, 8)};
      const __m512i ij[4] = {idx, _mm512_srli_epi32(idx, 8), _mm512_srli_epi32(idx, 16), _mm512_srli_epi32(idx, 24)};
      __m512 xv[TT];
#pragma GCC unroll 8
      for (int t = 0; t < TT; ++t) xv[t] = _mm512_castps256_ps512(_mm256_loadu_ps(xb[t] + k));
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) {
        const __m512 wj = _mm512_sub_ps(_mm512_castsi512_ps(_mm512_ternarylogic_epi32(cj[j], nib2, c43, 0xEA)), zoff);
#pragma GCC unroll 8
        for (int t = 0; t < TT; ++t) {
          const int c = NC == 4 ? j : 0;
          acc[t][c] = _mm512_fmadd_ps(wj, _mm512_permutexvar_ps(ij[j], xv[t]), acc[t][c]);
        }
      }
    });
    const __m512 sw = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(L.scales + blk * ROWS)));
#pragma GCC unroll 8
    for (int t = 0; t < TT; ++t) {
      __m512 r = acc[t][0];
#pragma GCC unroll 4
      for (int c = 1; c < NC; ++c) r = _mm512_add_ps(r, acc[t][c]);
      yv[t] = _mm512_add_ps(yv[t], _mm512_mul_ps(sw, r));
    }
  }
  const __mmask16 rm = row_mask(L, b);
#pragma GCC unroll 8
  for (int t = 0; t < TT; ++t) _mm512_mask_storeu_ps(y + size_t(t0 + t) * L.out + size_t(b) * ROWS, rm, yv[t]);
}

// W4A16, bf16 activations: vdpbf16ps takes a row's codes in pairs. The lane's
// words hold slots (0, 2) and, shifted right by 8, slots (1, 3), both for the
// codes and for the gather positions (vpermw reads the low 5 bits of a word).
// Symmetric weights: one vpermw turns a code into the bf16 number code - 8
// (exact). Asymmetric ones: the code becomes the bf16 128 + code (0x4300 |
// code, exact), a second dot product with ones sums the gathered activations,
// and 128 + zero times that sum comes off at the end of the group. Products
// are exact, sums fp32. Only called where the CPU has AVX512_BF16 (this unit is
// built with -mavx512bf16; no other code here uses those instructions).
// bf16 bits of a small integer (|v| <= 128: exact in bf16's 8-bit significand).
static constexpr uint16_t bf16_of_int(int v) {
  if (v == 0) return 0;
  const uint16_t sign = v < 0 ? 0x8000 : 0;
  const int a = v < 0 ? -v : v;
  int e = 0;
  while ((2 << e) <= a) ++e;
  return uint16_t(sign | (127 + e) << 7 | ((a - (1 << e)) << (7 - e)));
}
// Compile time, as Tab24.
struct alignas(64) TabBf16 {
  uint16_t centered[32] = {};  // bf16 of (i & 15) - 8
  constexpr TabBf16() {
    for (int i = 0; i < 32; ++i) centered[i] = bf16_of_int((i & 15) - 8);
  }
};
static constexpr TabBf16 tab_bf16{};
static_assert(tab_bf16.centered[0] == 0xC100 && tab_bf16.centered[9] == 0x3F80 && tab_bf16.centered[8] == 0 &&
              tab_bf16.centered[15] == 0x40E0, "bf16 of -8, 1, 0, 7");

template <int TT, bool SYM>
static void w4a16bf_tile24(const FastLayout& L, const ActF& a, int b, int t0, float* y) {
  constexpr int NC = TT == 1 ? 2 : 1;
  const int G = L.groups;
  const __m512i nib = _mm512_set1_epi32(0x000F000F), c43 = _mm512_set1_epi32(0x43004300);
  const __m512i lut = _mm512_load_si512(tab_bf16.centered);
  const __m512bh ones = (__m512bh)_mm512_set1_epi16(0x3F80);
  const uint16_t* xb[TT];
  __m512 yv[TT];
#pragma GCC unroll 8
  for (int t = 0; t < TT; ++t) {
    xb[t] = a.xb + size_t(t0 + t) * a.kk;
    yv[t] = _mm512_setzero_ps();
  }
  for (int g = 0; g < G; ++g) {
    const size_t blk = size_t(b) * G + g;
    __m512 acc[TT][2 * NC], sx[TT][2 * NC];
#pragma GCC unroll 8
    for (int t = 0; t < TT; ++t)
#pragma GCC unroll 4
      for (int c = 0; c < 2 * NC; ++c) acc[t][c] = sx[t][c] = _mm512_setzero_ps();
    walk24(L, b, g, [&](auto parity, int k, __m512i codes, __m512i quad, auto e) __attribute__((always_inline)) {
      constexpr int c = NC == 2 ? 2 * decltype(parity)::value : 0;
      const __m512i idx = index24(quad, e);
      __m512bh w0, w1;
      if constexpr (SYM) {
        w0 = (__m512bh)_mm512_permutexvar_epi16(codes, lut);
        w1 = (__m512bh)_mm512_permutexvar_epi16(_mm512_srli_epi32(codes, 8), lut);
      } else {
        w0 = (__m512bh)_mm512_ternarylogic_epi32(codes, nib, c43, 0xEA);
        w1 = (__m512bh)_mm512_ternarylogic_epi32(_mm512_srli_epi32(codes, 8), nib, c43, 0xEA);
      }
      const __m512i i1 = _mm512_srli_epi32(idx, 8);
#pragma GCC unroll 8
      for (int t = 0; t < TT; ++t) {
        const __m512i xv = _mm512_castsi128_si512(_mm_loadu_si128(reinterpret_cast<const __m128i*>(xb[t] + k)));
        const __m512bh g0 = (__m512bh)_mm512_permutexvar_epi16(idx, xv);
        const __m512bh g1 = (__m512bh)_mm512_permutexvar_epi16(i1, xv);
        acc[t][c] = _mm512_dpbf16_ps(acc[t][c], w0, g0);
        acc[t][c + 1] = _mm512_dpbf16_ps(acc[t][c + 1], w1, g1);
        if constexpr (!SYM) {
          sx[t][c] = _mm512_dpbf16_ps(sx[t][c], ones, g0);
          sx[t][c + 1] = _mm512_dpbf16_ps(sx[t][c + 1], ones, g1);
        }
      }
    });
    __m512 zoff = _mm512_setzero_ps();
    if constexpr (!SYM) {
      __m512i zd, zf;
      zero_vectors(L, blk, zd, zf);
      zoff = _mm512_cvtepi32_ps(_mm512_add_epi32(zd, _mm512_set1_epi32(128)));
    }
    const __m512 sw = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(L.scales + blk * ROWS)));
#pragma GCC unroll 8
    for (int t = 0; t < TT; ++t) {
      __m512 r = _mm512_add_ps(acc[t][0], acc[t][1]);
      if constexpr (NC == 2) r = _mm512_add_ps(r, _mm512_add_ps(acc[t][2], acc[t][3]));
      if constexpr (!SYM) {
        __m512 q = _mm512_add_ps(sx[t][0], sx[t][1]);
        if constexpr (NC == 2) q = _mm512_add_ps(q, _mm512_add_ps(sx[t][2], sx[t][3]));
        r = _mm512_sub_ps(r, _mm512_mul_ps(zoff, q));
      }
      yv[t] = _mm512_add_ps(yv[t], _mm512_mul_ps(sw, r));
    }
  }
  const __mmask16 rm = row_mask(L, b);
#pragma GCC unroll 8
  for (int t = 0; t < TT; ++t) _mm512_mask_storeu_ps(y + size_t(t0 + t) * L.out + size_t(b) * ROWS, rm, yv[t]);
}

template <bool SYM>
static void w4a16bf_blocks(const FastLayout& L, const ActF& a, int b0, int b1, float* y) {
  for (int b = b0; b < b1; ++b)
    by_token_tiles(a.tokens, [&](auto tt, int t) { w4a16bf_tile24<decltype(tt)::value, SYM>(L, a, b, t, y); });
}

static void fast_w4a16_bf16(const FastLayout& L, const ActF& a, int b0, int b1, float* y) {
  if (L.symmetric)
    w4a16bf_blocks<true>(L, a, b0, b1, y);
  else
    w4a16bf_blocks<false>(L, a, b0, b1, y);
}

template <int KIND>
static void w4a8_kind(const FastLayout& L, const Act8& a, int b0, int b1, float* y, int32_t* P) {
  for (int b = b0; b < b1; ++b)
    by_token_tiles(a.tokens, [&](auto tt, int t) {
      constexpr int TT = decltype(tt)::value;
      if constexpr (KIND == KIND_24)
        w4a8_tile24<TT>(L, a, b, t, y, P);
      else
        w4a8_tile<KIND, TT>(L, a, b, t, y, P);
    });
}

template <int KIND>
static void w4a16_kind(const FastLayout& L, const ActF& a, int b0, int b1, float* y) {
  for (int b = b0; b < b1; ++b)
    by_token_tiles(a.tokens, [&](auto tt, int t) {
      constexpr int TT = decltype(tt)::value;
      if constexpr (KIND == KIND_24)
        w4a16_tile24<TT>(L, a, b, t, y);
      else
        w4a16_tile<KIND, TT>(L, a, b, t, y);
    });
}

static void fast_w4a8_simd(const FastLayout& L, const Act8& a, int b0, int b1, float* y, int32_t* P) {
  switch (L.kind) {
    case KIND_24: return w4a8_kind<KIND_24>(L, a, b0, b1, y, P);
    case KIND_48: return w4a8_kind<KIND_48>(L, a, b0, b1, y, P);
    case KIND_14: return w4a8_kind<KIND_14>(L, a, b0, b1, y, P);
    default: return w4a8_kind<KIND_DENSE>(L, a, b0, b1, y, P);
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

// --- Gram matrix of bf16 activations (calibration Hessians) ---------------------
// c += X^T X with X packed in panels of 16 features, [panel][pair][16][2]
// bf16: tokens 2p and 2p + 1 of a feature side by side, the pairs vdpbf16ps
// multiplies and adds in fp32. A strip is 8 rows (features of one panel,
// broadcast) by up to 3 panels of columns, its 24 accumulators in registers
// over all pairs. Work item w is column tile tiles - 1 - w (the longest
// first); a tile covers rows 0 up to its last column, so only tiles on or
// above the diagonal are computed (those crossing it fill some entries below
// it too).
template <int NB>
static NMQ_INLINE void gram_strip(const uint32_t* a, const uint32_t* b, size_t pw, int pairs, float* c,
                                  int64_t ldc) {
  __m512 acc[8][NB];
#pragma GCC unroll 8
  for (int r = 0; r < 8; ++r)
#pragma GCC unroll 3
    for (int q = 0; q < NB; ++q) acc[r][q] = _mm512_loadu_ps(c + r * ldc + 16 * q);
  for (int t = 0; t < pairs; ++t) {
    __m512bh bv[NB];
#pragma GCC unroll 3
    for (int q = 0; q < NB; ++q) bv[q] = (__m512bh)_mm512_loadu_si512(b + q * pw + size_t(t) * 16);
#pragma GCC unroll 8
    for (int r = 0; r < 8; ++r) {
      const __m512bh av = (__m512bh)_mm512_set1_epi32(int(a[size_t(t) * 16 + r]));
#pragma GCC unroll 3
      for (int q = 0; q < NB; ++q) acc[r][q] = _mm512_dpbf16_ps(acc[r][q], av, bv[q]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < 8; ++r)
#pragma GCC unroll 3
    for (int q = 0; q < NB; ++q) _mm512_storeu_ps(c + r * ldc + 16 * q, acc[r][q]);
}

static void gram_bf16(const uint16_t* packed, int panels, int pairs, float* c, int64_t ldc, int w0, int w1) {
  const int tiles = (panels + GRAM_TILE_PANELS - 1) / GRAM_TILE_PANELS;
  const size_t pw = size_t(pairs) * 16;  // 32-bit words (bf16 pairs) per panel
  const uint32_t* p = reinterpret_cast<const uint32_t*>(packed);
  for (int w = w0; w < w1; ++w) {
    const int q0 = GRAM_TILE_PANELS * (tiles - 1 - w);
    const int nb = std::min(GRAM_TILE_PANELS, panels - q0);
    const uint32_t* b = p + size_t(q0) * pw;
    for (int i = 0; i < 16 * (q0 + nb); i += 8) {
      const uint32_t* a = p + size_t(i / 16) * pw + i % 16;
      float* ct = c + int64_t(i) * ldc + 16 * q0;
      if (nb == 3) gram_strip<3>(a, b, pw, pairs, ct, ldc);
      else if (nb == 2) gram_strip<2>(a, b, pw, pairs, ct, ldc);
      else gram_strip<1>(a, b, pw, pairs, ct, ldc);
    }
  }
}

// Tokens [t0, t1) (whole tiles) of x [tokens][k] (fp32 or bf16 bits) as fast24_prefill's tiles: xt
// [tiles][kk][PREFILL_TILE], zero past k and past the last token. One gather per K position and 16 tokens.
static void prefill_tiles(const void* x, bool bf16, int tokens, int k, int kk, int t0, int t1, float* xt) {
  constexpr int PT = PREFILL_TILE;
  for (int t = t0; t < t1; t += PT) {
    float* tile = xt + size_t(t / PT) * kk * PT;
    for (int v = 0; v < PT; v += 16) {
      const int n = std::max(0, std::min(16, tokens - t - v));
      const __mmask16 live = __mmask16((1u << n) - 1u);
      const __m512i rows = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                              _mm512_set1_epi32(k));
      for (int c = 0; c < kk; ++c) {
        __m512 col = _mm512_setzero_ps();
        if (c < k && n > 0) {
          if (bf16) {
            const uint16_t* base = static_cast<const uint16_t*>(x) + size_t(t + v) * k + c;
            // 32-bit gathers of bf16 pairs at 2-byte offsets: the wanted half is the low one.
            __m512i w = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), live, rows, base, 2);
            col = _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
          } else {
            const float* base = static_cast<const float*>(x) + size_t(t + v) * k + c;
            col = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), live, rows, base, 4);
          }
        }
        _mm512_store_ps(tile + size_t(c) * PT + v, col);
      }
    }
  }
}

// --- 2:4 with many tokens ------------------------------------------------------
// A prefill's tokens are many: a row block's kept weights are decoded once per
// call, as (value, K) pairs with the scale applied (the reference's
// dequantized values), and each one is multiplied into PREFILL_TILE tokens at
// once from activations transposed into tiles [kk][PREFILL_TILE] (one load
// fetches a K position of 16 tokens), so the dropped half of the weights costs
// nothing. Eight rows at a time, two vectors of tokens each: sixteen
// accumulators, and the rows walk K together, so the activations a pair-step
// needs (1 KB) are loaded into L1 once and used by all eight.
// Byte slot * 16 + row of a pair-step's row lanes (byte 4 * row + slot): the lanes slot by slot.
struct alignas(64) SlotMajor {
  uint8_t idx[64] = {};
  constexpr SlotMajor() {
    for (int o = 0; o < 64; ++o) idx[o] = uint8_t(4 * (o % 16) + o / 16);
  }
};
static constexpr SlotMajor slot_major{};

// One 2:4 pair-step of a row block (codes c, metadata quad and step e as walk24 hands them over, K k of its
// first position), slot by slot: fn(slot, values, ks) with the 16 rows' dequantized weights of that slot
// (float(code - zero) * scale, the reference's) and their K positions, as lanes.
template <typename Fn>
static NMQ_INLINE void dequant_step24(__m512i c, __m512i quad, int e, int k, __m512i zv, __m512 sv, Fn&& fn) {
  const __m512i perm = ld(slot_major.idx);
  alignas(64) uint8_t codes[64], pos[64];
  _mm512_store_si512(codes, _mm512_permutexvar_epi8(perm, _mm512_and_si512(c, _mm512_set1_epi8(0x0F))));
  _mm512_store_si512(pos, _mm512_permutexvar_epi8(perm, index24(quad, e)));
#pragma GCC unroll 4
  for (int slot = 0; slot < 4; ++slot) {
    const __m512i ci = _mm512_cvtepu8_epi32(_mm_load_si128(reinterpret_cast<const __m128i*>(codes + 16 * slot)));
    const __m512i pi = _mm512_cvtepu8_epi32(_mm_load_si128(reinterpret_cast<const __m128i*>(pos + 16 * slot)));
    fn(slot, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(ci, zv)), sv), _mm512_add_epi32(pi, _mm512_set1_epi32(k)));
  }
}

// Every pair-step of row block b: fn(k, slot, values, ks) as dequant_step24's, k the pair-step's first K.
template <typename Fn>
static NMQ_INLINE void dequant_block24(const FastLayout& L, int b, Fn&& fn) {
  for (int g = 0; g < L.groups; ++g) {
    const size_t blk = size_t(b) * L.groups + g;
    uint8_t z8[ROWS];
    block_zeros(L, blk, z8);
    const __m512i zv = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(z8)));
    const __m512 sv = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(L.scales + blk * ROWS)));
    walk24(L, b, g, [&](auto, int k, __m512i c, __m512i quad, auto e) __attribute__((always_inline)) {
      dequant_step24(c, quad, e, k, zv, sv, [&](int slot, __m512 vv, __m512i kv) __attribute__((always_inline)) {
        fn(k, slot, vv, kv);
      });
    });
  }
}

static void fast24_prefill(const FastLayout& L, const float* xt, int tokens, int b0, int b1, float* y) {
  constexpr int PT = PREFILL_TILE, RB = 8;
  static_assert(2 * RB == ROWS, "a row block is two halves of RB rows");
  static_assert(PT == 32, "two zmm of tokens per row");
  const int kept = L.kk / 2;
  const int nb = b1 - b0;
  // Per block of [b0, b1): [row half][kept j][row of the half], what the inner loop reads, in order. The j of
  // a pair-step's kept weights go by slot, not K (the order of a dot product's terms). All the blocks are
  // decoded first so that each activation tile is read from memory once for all of them.
  thread_local std::vector<float> val;
  thread_local std::vector<uint32_t> off;
  val.resize(size_t(nb) * ROWS * kept);
  off.resize(size_t(nb) * ROWS * kept);
  for (int b = b0; b < b1; ++b) {
    float* vb = val.data() + size_t(b - b0) * ROWS * kept;
    uint32_t* ob = off.data() + size_t(b - b0) * ROWS * kept;
    dequant_block24(L, b, [&](int k, int slot, __m512 vv, __m512i kv) __attribute__((always_inline)) {
      const __m512i ov = _mm512_mullo_epi32(kv, _mm512_set1_epi32(PT));
      const size_t j = size_t(k / PAIR_K) * 4 + slot;
      _mm256_storeu_ps(&vb[j * RB], _mm512_castps512_ps256(vv));
      _mm256_storeu_ps(&vb[(kept + j) * RB], _mm512_extractf32x8_ps(vv, 1));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(&ob[j * RB]), _mm512_castsi512_si256(ov));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(&ob[(kept + j) * RB]), _mm512_extracti32x8_epi32(ov, 1));
    });
  }
  const int tiles = (tokens + PT - 1) / PT;
  alignas(64) float out[ROWS][PT];
  for (int tt = 0; tt < tiles; ++tt) {
    const float* xtile = xt + size_t(tt) * L.kk * PT;
    const int nt = std::min(PT, tokens - tt * PT);
    for (int b = b0; b < b1; ++b) {
      const int rows = std::min(ROWS, L.out - b * ROWS);
      for (int h = 0; h * RB < rows; ++h) {
        __m512 a[RB][2];
        for (int r = 0; r < RB; ++r) a[r][0] = a[r][1] = _mm512_setzero_ps();
        const float* vp = val.data() + (size_t(b - b0) * 2 + h) * kept * RB;
        const uint32_t* op = off.data() + (size_t(b - b0) * 2 + h) * kept * RB;
        for (int j = 0; j < kept; ++j, vp += RB, op += RB) {
#pragma GCC unroll 8
          for (int r = 0; r < RB; ++r) {
            const float* xp = xtile + op[r];
            const __m512 w = _mm512_set1_ps(vp[r]);
            a[r][0] = _mm512_fmadd_ps(w, _mm512_load_ps(xp), a[r][0]);
            a[r][1] = _mm512_fmadd_ps(w, _mm512_load_ps(xp + 16), a[r][1]);
          }
        }
        for (int r = 0; r < RB; ++r) {
          _mm512_store_ps(out[h * RB + r], a[r][0]);
          _mm512_store_ps(out[h * RB + r] + 16, a[r][1]);
        }
      }
      for (int i = 0; i < nt; ++i) {
        float* yr = y + size_t(tt * PT + i) * L.out + size_t(b) * ROWS;
        for (int r = 0; r < rows; ++r) yr[r] = out[r][i];
      }
    }
  }
}

// fast_dequant with 2:4 decoded as fast24_prefill decodes it, then scattered to the rows: the dense weight of
// a GEMM-sized call is built in a few percent of the GEMM's time.
static void fast_dequant24(const FastLayout& L, int b0, int b1, float* w) {
  if (L.kind != KIND_24) return fast_dequant(L, b0, b1, w);
  const __m512i rowoff = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                            _mm512_set1_epi32(L.kk));
  for (int b = b0; b < b1; ++b) {
    const int rows = std::min(ROWS, L.out - b * ROWS);
    const __mmask16 live = __mmask16((1u << rows) - 1u);
    float* wb = w + size_t(b) * ROWS * L.kk;
    for (int r = 0; r < rows; ++r) std::memset(wb + size_t(r) * L.kk, 0, sizeof(float) * L.kk);
    dequant_block24(L, b, [&](int, int, __m512 vv, __m512i kv) __attribute__((always_inline)) {
      _mm512_mask_i32scatter_ps(wb, live, _mm512_add_epi32(rowoff, kv), vv, 4);
    });
  }
}

}  // namespace avx512

const Level* level_avx512() {
  static const Level level = [] {
    Level l;
    l.name = "avx512";
    l.matmul.quantize = avx512::quantize16;
    l.matmul.group_sums = avx512::group_sums;
    l.matmul.fast_w4a8 = avx512::fast_w4a8_simd;
    l.matmul.fast_w4a16 = avx512::fast_w4a16_simd;
    l.matmul.fast_w4a16_bf16 = avx512::fast_w4a16_bf16;
    l.matmul.fast24_prefill = avx512::fast24_prefill;
    l.matmul.prefill_tiles = avx512::prefill_tiles;
    l.matmul.generic_w4a8 = avx512::generic_w4a8;
    l.matmul.generic_w4a16 = avx512::generic_w4a16;
    l.matmul.fast_dequant = avx512::fast_dequant24;
    l.matmul.generic_dequant = avx512::generic_dequant;
    l.matmul.pair_table24 = avx512::pair_table24;
    l.matmul.to_bf16 = avx512::to_bf16_n;
    l.decode = avx512::decode_ops();
    l.gram.gram_bf16 = avx512::gram_bf16;
    return l;
  }();
  return &level;
}
}  // namespace nmq

#else
namespace nmq {
const Level* level_avx512() { return nullptr; }
}  // namespace nmq
#endif
