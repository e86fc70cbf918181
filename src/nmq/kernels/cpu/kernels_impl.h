// Plain C++ kernels, included by every ISA translation unit inside its own
// namespace (NMQ_NS) so each copy is compiled with that unit's -m flags. The
// AVX-512 unit replaces the fast-layout kernels with intrinsics; the rest is
// shared so every level quantizes activations and sums W4A8 groups with the
// very same fp32 operations (bit-identical integer path and outputs).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels.h"

namespace nmq {
namespace NMQ_NS {

static inline float half_to_float(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1Fu;
  uint32_t man = h & 0x3FFu;
  uint32_t bits;
  if (exp == 0) {
    if (man == 0) {
      bits = sign;
    } else {
      int e = -1;
      do {
        man <<= 1;
        ++e;
      } while (!(man & 0x400u));
      man &= 0x3FFu;
      bits = sign | (uint32_t(112 - e) << 23) | (man << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7F800000u | (man << 13);
  } else {
    bits = sign | ((exp + 112) << 23) | (man << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// --- activations -------------------------------------------------------------

// The numerics contract: scale = absmax / 127 (fp32), q = round_half_even(x /
// scale) with a true division, clamp to +-127, scale 0 -> q 0.
static void quantize(const float* x, int t0, int t1, const Act8& a) {
  for (int t = t0; t < t1; ++t) {
    const float* xr = x + size_t(t) * a.kk;
    int8_t* qr = const_cast<int8_t*>(a.q) + size_t(t) * a.kk;
    for (int g = 0; g < a.groups; ++g) {
      const float* xg = xr + size_t(g) * a.group;
      float amax = 0.f;
      for (int k = 0; k < a.group; ++k) amax = std::max(amax, std::fabs(xg[k]));
      float scale = amax / 127.0f;
      float div = scale == 0.f ? 1.f : scale;
      int32_t sum = 0;
      for (int k = 0; k < a.group; ++k) {
        float r = std::nearbyint(xg[k] / div);
        r = std::min(127.f, std::max(-127.f, r));
        int8_t q = scale == 0.f ? int8_t(0) : int8_t(r);
        qr[size_t(g) * a.group + k] = q;
        sum += q;
      }
      const_cast<float*>(a.scale)[size_t(t) * a.groups + g] = scale;
      const_cast<int32_t*>(a.qsum)[size_t(t) * a.groups + g] = sum;
    }
  }
}

static void group_sums(const float* x, int t0, int t1, const ActF& a) {
  for (int t = t0; t < t1; ++t)
    for (int g = 0; g < a.groups; ++g) {
      const float* xg = x + size_t(t) * a.kk + size_t(g) * a.group;
      float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      int k = 0;
      for (; k + 8 <= a.group; k += 8)
        for (int l = 0; l < 8; ++l) s[l] += xg[k + l];
      for (; k < a.group; ++k) s[0] += xg[k];
      const_cast<float*>(a.xsum)[size_t(t) * a.groups + g] =
          ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
    }
}

static inline float dot_f32(const float* a, const float* b, int n) {
  float s[16] = {};
  int k = 0;
  for (; k + 16 <= n; k += 16)
    for (int l = 0; l < 16; ++l) s[l] += a[k + l] * b[k + l];
  for (; k < n; ++k) s[0] += a[k] * b[k];
  float r = 0.f;
  for (int l = 0; l < 16; ++l) r += s[l];
  return r;
}

static inline int32_t dot_i8(const int8_t* w, const int8_t* q, int n) {
  int32_t s = 0;
  for (int k = 0; k < n; ++k) s += int32_t(w[k]) * int32_t(q[k]);
  return s;
}

static inline int32_t dot_i16_i8(const int16_t* w, const int8_t* q, int n) {
  int32_t s = 0;
  for (int k = 0; k < n; ++k) s += int32_t(w[k]) * int32_t(q[k]);
  return s;
}

// --- fast layout, scalar -------------------------------------------------------

static inline void block_zeros(const FastLayout& L, size_t blk, uint8_t* z) {
  for (int r = 0; r < ROWS; ++r) {
    if (L.symmetric) {
      z[r] = 8;
    } else {
      uint8_t b = L.zeros[blk * 8 + (r & 7)];
      z[r] = r < 8 ? (b & 15) : (b >> 4);
    }
  }
}

// Row block b's pair-step t (counted over all its groups): the 64 value bytes
// holding it (in the low nibbles for even t, else the high ones) and its
// metadata quad (at step t % 4 in it).
static inline const uint8_t* vals24(const FastLayout& L, int b, int t) {
  return L.vals + size_t(b) * vals24_stride(L) + size_t(t / 2) * 64;
}
static inline const uint8_t* quad24_at(const FastLayout& L, int b, int t) {
  return L.meta + size_t(b) * meta24_stride(L) + size_t(t / 4) * QUAD24;
}

// Row r's 6-bit metadata field of step e of a quad.
static inline int field24(const uint8_t* quad, int r, int e) {
  uint64_t w = 0;
  std::memcpy(&w, quad + 6 * (r >> 1), 6);
  return int((w >> (12 * e + 6 * (r & 1))) & 63);
}

// One 2:4 pair-step (v, half: its value bytes and nibble; quad, e: its
// metadata): the codes of row r's slots (code[4r + slot]) and the K
// positions (0..7) they meet.
static inline void decode24(const uint8_t* v, int half, const uint8_t* quad, int e, uint8_t* code, uint8_t* pos) {
  for (int r = 0; r < ROWS; ++r) {
    const int f = field24(quad, r, e), ra = f & 7, rb = f >> 3;
    for (int slot = 0; slot < 4; ++slot) code[4 * r + slot] = (v[4 * r + slot] >> (4 * half)) & 15;
    pos[4 * r + 0] = PAIR24[ra][0];
    pos[4 * r + 2] = PAIR24[ra][1];
    pos[4 * r + 1] = uint8_t(4 + PAIR24[rb][0]);
    pos[4 * r + 3] = uint8_t(4 + PAIR24[rb][1]);
  }
}

// One pair-step as 128 byte positions (A then B, each [16 rows][4 K]); the
// positions a weight does not keep hold the row's zero code, like the
// merge-masked expand of the AVX-512 kernel.
// For 2:4, v and half are as decode24's, m is the pair-step's metadata quad
// and e its step in it.
static inline void decode_pair(int kind, const uint8_t* v, const uint8_t* m, const uint8_t* z, uint8_t* w,
                               int e = 0, int half = 0) {
  switch (kind) {
    case KIND_24: {
      for (int p = 0; p < 128; ++p) w[p] = z[(p & 63) >> 2];
      uint8_t code[64], pos[64];
      decode24(v, half, m, e, code, pos);
      for (int i = 0; i < 64; ++i) w[(pos[i] >> 2) * 64 + (i & ~3) + (pos[i] & 3)] = code[i];
      break;
    }
    case KIND_48: {
      uint8_t c[64];
      for (int i = 0; i < 32; ++i) {
        c[i] = v[i] & 15;
        c[i + 32] = v[i] >> 4;
      }
      uint64_t mk[2];
      std::memcpy(mk, m, 16);
      for (int p = 0; p < 128; ++p) w[p] = z[(p & 63) >> 2];
      int j = 0;
      for (int h = 0; h < 2; ++h)
        for (uint64_t bits = mk[h]; bits; bits &= bits - 1) w[h * 64 + __builtin_ctzll(bits)] = c[(j++) & 63];
      break;
    }
    case KIND_14: {
      uint8_t c[32];
      for (int i = 0; i < 16; ++i) {
        c[i] = v[i] & 15;
        c[i + 16] = v[i] >> 4;
      }
      uint32_t ix[2];
      std::memcpy(ix, m, 8);
      for (int h = 0; h < 2; ++h)
        for (int r = 0; r < 16; ++r) {
          int pos = (ix[h] >> (2 * r)) & 3;
          for (int j = 0; j < 4; ++j) w[h * 64 + r * 4 + j] = j == pos ? c[h * 16 + r] : z[r];
        }
      break;
    }
    default:  // dense
      for (int p = 0; p < 64; ++p) {
        w[p] = v[p] & 15;
        w[64 + p] = v[p] >> 4;
      }
  }
}

// Centered weights (code - zero) of one row block and group, [16][group].
template <typename T>
static void decode_block_group(const FastLayout& L, size_t blk, const uint8_t* z, T* wc) {
  const uint8_t* v = L.vals + blk * L.steps * L.vbytes;
  const uint8_t* m = L.meta + blk * L.steps * L.mbytes;
  uint8_t w[128];
  for (int s = 0; s < L.steps; ++s) {
    if (L.kind == KIND_24) {
      const int b = int(blk / L.groups), t = int(blk % L.groups) * L.steps + s;
      decode_pair(L.kind, vals24(L, b, t), quad24_at(L, b, t), z, w, t % 4, t & 1);
    } else {
      decode_pair(L.kind, v + size_t(s) * L.vbytes, m + size_t(s) * L.mbytes, z, w);
    }
    for (int h = 0; h < 2; ++h)
      for (int r = 0; r < ROWS; ++r)
        for (int j = 0; j < 4; ++j)
          wc[size_t(r) * L.group + s * 8 + h * 4 + j] = T(int(w[h * 64 + r * 4 + j]) - int(z[r]));
  }
}

[[maybe_unused]] static void fast_w4a8(const FastLayout& L, const Act8& a, int b0, int b1, float* y, int32_t* P) {
  std::vector<int8_t> wc(size_t(ROWS) * L.group);
  std::vector<float> acc(size_t(a.tokens) * ROWS);
  for (int b = b0; b < b1; ++b) {
    std::fill(acc.begin(), acc.end(), 0.f);
    const int rows = std::min(ROWS, L.out - b * ROWS);
    for (int g = 0; g < L.groups; ++g) {
      size_t blk = size_t(b) * L.groups + g;
      uint8_t z[ROWS];
      block_zeros(L, blk, z);
      decode_block_group(L, blk, z, wc.data());
      for (int t = 0; t < a.tokens; ++t) {
        const int8_t* q = a.q + size_t(t) * a.kk + size_t(g) * L.group;
        float sx = a.scale[size_t(t) * a.groups + g];
        for (int r = 0; r < rows; ++r) {
          int32_t p = dot_i8(wc.data() + size_t(r) * L.group, q, L.group);
          if (P) P[(size_t(t) * L.out + b * ROWS + r) * L.groups + g] = p;
          float sw = half_to_float(L.scales[blk * ROWS + r]);
          float& o = acc[size_t(t) * ROWS + r];
          o = o + (sw * sx) * float(p);
        }
      }
    }
    for (int t = 0; t < a.tokens; ++t)
      for (int r = 0; r < rows; ++r) y[size_t(t) * L.out + b * ROWS + r] = acc[size_t(t) * ROWS + r];
  }
}

[[maybe_unused]] static void fast_w4a16(const FastLayout& L, const ActF& a, int b0, int b1, float* y) {
  std::vector<float> wf(size_t(ROWS) * L.group);
  std::vector<float> acc(size_t(a.tokens) * ROWS);
  for (int b = b0; b < b1; ++b) {
    std::fill(acc.begin(), acc.end(), 0.f);
    const int rows = std::min(ROWS, L.out - b * ROWS);
    for (int g = 0; g < L.groups; ++g) {
      size_t blk = size_t(b) * L.groups + g;
      uint8_t z[ROWS];
      block_zeros(L, blk, z);
      decode_block_group(L, blk, z, wf.data());
      for (int t = 0; t < a.tokens; ++t) {
        const float* x = a.x + size_t(t) * a.kk + size_t(g) * L.group;
        for (int r = 0; r < rows; ++r) {
          float d = dot_f32(wf.data() + size_t(r) * L.group, x, L.group);
          acc[size_t(t) * ROWS + r] += half_to_float(L.scales[blk * ROWS + r]) * d;
        }
      }
    }
    for (int t = 0; t < a.tokens; ++t)
      for (int r = 0; r < rows; ++r) y[size_t(t) * L.out + b * ROWS + r] = acc[size_t(t) * ROWS + r];
  }
}

// Row blocks [b0, b1) dequantized into w [out][kk] (fp32): the reference's value, float(code - zero) * scale.
// 2:4 is decoded straight into the rows (decode24's codes at its positions, zeros elsewhere): the dequantized
// weight is built per call, and the generic decode through 128-byte pair-steps costs as much as a small GEMM.
[[maybe_unused]] static void fast_dequant(const FastLayout& L, int b0, int b1, float* w) {
  std::vector<float> wc(size_t(ROWS) * L.group);
  for (int b = b0; b < b1; ++b) {
    const int rows = std::min(ROWS, L.out - b * ROWS);
    for (int g = 0; g < L.groups; ++g) {
      size_t blk = size_t(b) * L.groups + g;
      uint8_t z[ROWS];
      block_zeros(L, blk, z);
      if (L.kind == KIND_24) {
        float s[ROWS];
        for (int r = 0; r < rows; ++r) s[r] = half_to_float(L.scales[blk * ROWS + r]);
        for (int st = 0; st < L.steps; ++st) {
          const int t = g * L.steps + st;
          uint8_t code[64], pos[64];
          decode24(vals24(L, b, t), t & 1, quad24_at(L, b, t), t % 4, code, pos);
          for (int r = 0; r < rows; ++r) {
            float* d = w + size_t(b * ROWS + r) * L.kk + size_t(t) * PAIR_K;
            for (int k = 0; k < PAIR_K; ++k) d[k] = 0.f;
            for (int slot = 0; slot < 4; ++slot) d[pos[4 * r + slot]] = float(int(code[4 * r + slot]) - int(z[r])) * s[r];
          }
        }
        continue;
      }
      decode_block_group(L, blk, z, wc.data());
      for (int r = 0; r < rows; ++r) {
        const float s = half_to_float(L.scales[blk * ROWS + r]);
        const float* src = wc.data() + size_t(r) * L.group;
        float* dst = w + size_t(b * ROWS + r) * L.kk + size_t(g) * L.group;
        for (int k = 0; k < L.group; ++k) dst[k] = src[k] * s;
      }
    }
  }
}

// --- canonical layout ----------------------------------------------------------

static inline uint32_t read_bits(const uint8_t* p, int64_t nbytes, int64_t bitpos, int width) {
  int64_t byte = bitpos >> 3;
  int sh = int(bitpos & 7);
  uint32_t v = 0;
  for (int i = 0; i < 3 && byte + i < nbytes; ++i) v |= uint32_t(p[byte + i]) << (8 * i);
  return (v >> sh) & ((1u << width) - 1u);
}

// Row r as centered integers (code - zero) at every K position, zero where the
// pattern drops the weight; scales of the row's groups as fp32.
static void decode_row(const GenericLayout& L, int r, int16_t* w, float* sw) {
  std::memset(w, 0, sizeof(int16_t) * L.padded_in);
  const uint8_t* vr = L.values + r * L.vstride;
  const uint8_t* mr = L.meta + r * L.mstride;
  const int mgroups = L.padded_in / L.m;
  const int per_group = L.group / L.m * L.n;  // kept codes per quantization group
  for (int g = 0; g < L.groups; ++g) {
    sw[g] = half_to_float(L.scales[size_t(r) * L.groups + g]);
  }
  int64_t kept = 0;
  for (int mg = 0; mg < mgroups; ++mg) {
    for (int i = 0; i < L.n; ++i, ++kept) {
      int pos;
      if (L.meta_kind == META_DENSE) {
        pos = i;
      } else if (L.meta_kind == META_INDEX) {
        pos = int(read_bits(mr, L.mstride, (int64_t(mg) * L.n + i) * L.meta_width, L.meta_width));
      } else {
        uint32_t rank = read_bits(mr, L.mstride, int64_t(mg) * L.meta_width, L.meta_width);
        pos = L.table[size_t(rank) * L.n + i];
      }
      int g = int(kept / per_group);
      int zero = L.symmetric ? (1 << (L.bits - 1))
                             : int(read_bits(L.zeros + r * L.zstride, L.zstride, int64_t(g) * L.bits, L.bits));
      int code = int(read_bits(vr, L.vstride, kept * L.bits, L.bits));
      w[size_t(mg) * L.m + pos] = int16_t(code - zero);
    }
  }
}

static void generic_w4a8(const GenericLayout& L, const Act8& a, int r0, int r1, float* y, int32_t* P) {
  std::vector<int16_t> w(L.padded_in);
  std::vector<float> sw(L.groups);
  for (int r = r0; r < r1; ++r) {
    decode_row(L, r, w.data(), sw.data());
    for (int t = 0; t < a.tokens; ++t) {
      const int8_t* q = a.q + size_t(t) * a.kk;
      float acc = 0.f;
      for (int g = 0; g < L.groups; ++g) {
        int32_t p = dot_i16_i8(w.data() + size_t(g) * L.group, q + size_t(g) * L.group, L.group);
        if (P) P[(size_t(t) * L.out + r) * L.groups + g] = p;
        acc = acc + (sw[g] * a.scale[size_t(t) * a.groups + g]) * float(p);
      }
      y[size_t(t) * L.out + r] = acc;
    }
  }
}

static void generic_w4a16(const GenericLayout& L, const ActF& a, int r0, int r1, float* y) {
  std::vector<int16_t> w(L.padded_in);
  std::vector<float> sw(L.groups), wf(L.padded_in);
  for (int r = r0; r < r1; ++r) {
    decode_row(L, r, w.data(), sw.data());
    // The reference's dequantized value: float(code - zero) * scale.
    for (int g = 0; g < L.groups; ++g)
      for (int k = 0; k < L.group; ++k) wf[size_t(g) * L.group + k] = float(w[size_t(g) * L.group + k]) * sw[g];
    for (int t = 0; t < a.tokens; ++t)
      y[size_t(t) * L.out + r] = dot_f32(wf.data(), a.x + size_t(t) * a.kk, L.padded_in);
  }
}

// Rows [r0, r1) dequantized into w [out][padded_in] (fp32), as generic_w4a16 computes them.
static void generic_dequant(const GenericLayout& L, int r0, int r1, float* w) {
  std::vector<int16_t> c(L.padded_in);
  std::vector<float> sw(L.groups);
  for (int r = r0; r < r1; ++r) {
    decode_row(L, r, c.data(), sw.data());
    float* dst = w + size_t(r) * L.padded_in;
    for (int g = 0; g < L.groups; ++g)
      for (int k = 0; k < L.group; ++k) dst[size_t(g) * L.group + k] = float(c[size_t(g) * L.group + k]) * sw[g];
  }
}

// --- decode step -----------------------------------------------------------------

#include "decode_ops.h"

// Sixteen independent partial sums so each ISA level's compiler vectorizes
// the loops; fp32 throughout, whatever the cache holds.
template <typename T>
static void attend_heads(const Attn& a, int h0, int h1) {
  thread_local std::vector<float> s, o;  // scratch, reused call after call
  s.resize(size_t(std::max(a.length, 1)));
  const int group = a.heads / a.kv_heads;
  for (int h = h0; h < h1; ++h) {
    const float* q = a.q + size_t(h) * a.dim;
    const T* k = static_cast<const T*>(a.k) + int64_t(h / group) * a.head_stride;
    const T* v = static_cast<const T*>(a.v) + int64_t(h / group) * a.head_stride;
    float top = -INFINITY;
    for (int j = 0; j < a.length; ++j) {
      const T* kr = k + size_t(j) * a.dim;
      float acc[16] = {};
      int i = 0;
      for (; i + 16 <= a.dim; i += 16)
        for (int l = 0; l < 16; ++l) acc[l] += q[i + l] * widen(kr[i + l]);
      for (; i < a.dim; ++i) acc[0] += q[i] * widen(kr[i]);
      float d = 0.f;
      for (int l = 0; l < 16; ++l) d += acc[l];
      s[j] = d * a.scale;
      top = std::max(top, s[j]);
    }
    float total = 0.f;
    for (int j = 0; j < a.length; ++j) s[j] = exp_approx(s[j] - top);
    for (int j = 0; j < a.length; ++j) total += s[j];
    o.assign(size_t(a.dim), 0.f);
    for (int j = 0; j < a.length; ++j) {
      const T* vr = v + size_t(j) * a.dim;
      const float p = s[j];
      for (int i = 0; i < a.dim; ++i) o[i] += p * widen(vr[i]);
    }
    const float inv = a.length ? 1.f / total : 0.f;
    if (a.out_narrow) {
      T* dst = static_cast<T*>(a.out) + size_t(h) * a.dim;
      for (int i = 0; i < a.dim; ++i) narrow(&dst[i], o[i] * inv);
    } else {
      float* dst = static_cast<float*>(a.out) + size_t(h) * a.dim;
      for (int i = 0; i < a.dim; ++i) dst[i] = o[i] * inv;
    }
  }
}

static void attend(const Attn& a, int h0, int h1) {
  if (a.bf16)
    attend_heads<uint16_t>(a, h0, h1);
  else
    attend_heads<float>(a, h0, h1);
}

// Every level runs the decode step on these plain loops, compiled with its own flags.
static DecodeOps decode_ops() {
  DecodeOps ops;
  ops.attend = attend;
  ops.add_rms_norm = add_rms_norm;
  ops.rotate_heads = rotate_heads;
  ops.silu_mul = silu_mul;
  return ops;
}

}  // namespace NMQ_NS
}  // namespace nmq
