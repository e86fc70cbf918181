// The operations of a batch-1 LLaMA decode step besides the linear layers:
// residual add + RMSNorm, rotary embedding, attention over the KV cache and
// the SiLU gate. At batch 1 these are a few thousand elements each, and
// PyTorch's per-op dispatch (cold after every layer's weights have streamed
// through the caches) costs far more than the arithmetic; here each is one
// call. Values are in the model's dtype, fp32 or bf16 (T = float or
// uint16_t bits); bf16 results round exactly where PyTorch's bf16 ops do
// (fp32 arithmetic, then round to nearest even), so a step computes what the
// model's own forward computes, up to the order of sums and exp's last bits.
//
// Included by kernels_impl.h inside each ISA level's namespace: plain loops
// without branches, which each level's compiler vectorizes with its own flags.

static inline float widen(float x) { return x; }
static inline float widen(uint16_t b) {
  const uint32_t bits = uint32_t(b) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

static inline uint16_t to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  const uint32_t rounded = bits + 0x7FFFu + ((bits >> 16) & 1u);
  return uint16_t(((bits & 0x7FFFFFFFu) > 0x7F800000u ? bits | 0x400000u : rounded) >> 16);  // NaN stays NaN
}

static void to_bf16_n(const float* src, uint16_t* dst, size_t n) {
  for (size_t i = 0; i < n; ++i) dst[i] = to_bf16(src[i]);
}

static inline void narrow(float* p, float v) { *p = v; }
static inline void narrow(uint16_t* p, float v) { *p = to_bf16(v); }

// v rounded to T, as a float: what a PyTorch op of that dtype returns.
template <typename T>
static inline float round_to(float v) {
  if constexpr (sizeof(T) == 2) return widen(to_bf16(v));
  return v;
}

// exp(x) within 3 ulp for |x| <= 87 (inputs clamped there): Cody-Waite
// reduction by ln 2 and a degree-6 polynomial, branch-free so it vectorizes.
static inline float exp_approx(float x) {
  x = x < -87.f ? -87.f : x > 87.f ? 87.f : x;
  const float n = (x * 1.44269504f + 12582912.f) - 12582912.f;  // round to nearest: 1.5 * 2^23
  const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  float p = 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.f;
  const int32_t e = (int32_t(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &e, 4);
  return p * scale;
}

// h += add (when add), then out = weight * rmsnorm(h) as LlamaRMSNorm does:
// normalized in fp32, rounded to the dtype, then scaled by the weight.
template <typename T>
static void add_rms_norm_t(T* h, const T* add, const T* w, T* out, int n, float eps) {
  float s[16] = {};
  int i = 0;
  for (; i + 16 <= n; i += 16)
    for (int l = 0; l < 16; ++l) {
      float x = widen(h[i + l]);
      if (add) {
        x = round_to<T>(x + widen(add[i + l]));
        narrow(&h[i + l], x);
      }
      s[l] += x * x;
    }
  for (; i < n; ++i) {
    float x = widen(h[i]);
    if (add) {
      x = round_to<T>(x + widen(add[i]));
      narrow(&h[i], x);
    }
    s[0] += x * x;
  }
  float total = 0.f;
  for (float v : s) total += v;
  const float r = 1.f / std::sqrt(total / float(n) + eps);
  for (int j = 0; j < n; ++j) narrow(&out[j], widen(w[j]) * round_to<T>(widen(h[j]) * r));
}

static void add_rms_norm(void* h, const void* add, const void* w, void* out, int n, float eps, bool bf16) {
  if (bf16)
    add_rms_norm_t(static_cast<uint16_t*>(h), static_cast<const uint16_t*>(add), static_cast<const uint16_t*>(w),
                   static_cast<uint16_t*>(out), n, eps);
  else
    add_rms_norm_t(static_cast<float*>(h), static_cast<const float*>(add), static_cast<const float*>(w),
                   static_cast<float*>(out), n, eps);
}

// Rotary embedding of `heads` heads of `dim` from src (HF's rotate_half:
// x * cos + cat(-x[half:], x[:half]) * sin, each product and the sum rounded
// to the dtype) to dst head j at dst + j * stride, in the dtype D (float
// for an fp32 query buffer: the values are still rounded to T). cos/sin
// null: a plain copy.
template <typename T, typename D>
static void rotate_t(const T* __restrict__ src, const T* __restrict__ cos, const T* __restrict__ sin,
                     D* __restrict__ dst, int64_t stride, int heads, int dim) {
  const int half = dim / 2;
  for (int j = 0; j < heads; ++j) {
    const T* __restrict__ x = src + size_t(j) * dim;
    D* __restrict__ o = dst + j * stride;
    if (!cos) {
      for (int i = 0; i < dim; ++i) narrow(&o[i], widen(x[i]));
      continue;
    }
    for (int i = 0; i < half; ++i)
      narrow(&o[i], round_to<T>(round_to<T>(widen(x[i]) * widen(cos[i])) +
                                round_to<T>(-widen(x[i + half]) * widen(sin[i]))));
    for (int i = half; i < dim; ++i)
      narrow(&o[i], round_to<T>(round_to<T>(widen(x[i]) * widen(cos[i])) +
                                round_to<T>(widen(x[i - half]) * widen(sin[i]))));
  }
}

// to_f32: dst is fp32 whatever the model's dtype.
static void rotate_heads(const void* src, const void* cos, const void* sin, void* dst, int64_t stride, bool to_f32,
                         int heads, int dim, bool bf16) {
  if (!bf16) {
    rotate_t(static_cast<const float*>(src), static_cast<const float*>(cos), static_cast<const float*>(sin),
             static_cast<float*>(dst), stride, heads, dim);
  } else if (to_f32) {
    rotate_t(static_cast<const uint16_t*>(src), static_cast<const uint16_t*>(cos), static_cast<const uint16_t*>(sin),
             static_cast<float*>(dst), stride, heads, dim);
  } else {
    rotate_t(static_cast<const uint16_t*>(src), static_cast<const uint16_t*>(cos), static_cast<const uint16_t*>(sin),
             static_cast<uint16_t*>(dst), stride, heads, dim);
  }
}

// out = silu(gate) * up, each rounded to the dtype (x / (1 + exp(-x)), as PyTorch's SiLU).
template <typename T>
static void silu_mul_t(const T* g, const T* u, T* out, int n) {
  for (int i = 0; i < n; ++i) {
    const float x = widen(g[i]);
    narrow(&out[i], round_to<T>(x / (1.f + exp_approx(-x))) * widen(u[i]));
  }
}

static void silu_mul(const void* g, const void* u, void* out, int n, bool bf16) {
  if (bf16)
    silu_mul_t(static_cast<const uint16_t*>(g), static_cast<const uint16_t*>(u), static_cast<uint16_t*>(out), n);
  else
    silu_mul_t(static_cast<const float*>(g), static_cast<const float*>(u), static_cast<float*>(out), n);
}
