// The weights' calls: activations prepared once per call in the form the
// layout's kernels read, then the kernels over row blocks on the pool.
#include "ext_weights.h"

#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "ext.h"

namespace nb = nanobind;

namespace nmq {
namespace {

template <typename T>
T* data_of(const Array& a, const char* what) {
  if (a.dtype() != nb::dtype<T>()) throw std::invalid_argument(std::string(what) + ": unexpected dtype");
  return static_cast<T*>(a.data());
}

template <typename T>
T* data_or_null(const Array& a, const char* what) {
  return a.size() == 0 ? nullptr : data_of<T>(a, what);
}

// Activations as the kernels get them: x [tokens][k], fp32 or bf16 bits,
// row-major and contiguous (the Python side makes sure of it).
struct Input {
  const void* x;
  bool bf16;
  int tokens, k;
};

// x -> fp32 [tokens][kk], zero padded.
std::vector<float> padded_input(const Input& in, int kk) {
  std::vector<float> out(size_t(in.tokens) * kk, 0.f);
  if (in.bf16) {
    const uint16_t* src = static_cast<const uint16_t*>(in.x);
    for (int t = 0; t < in.tokens; ++t)
      for (int i = 0; i < in.k; ++i) {
        uint32_t bits = uint32_t(src[size_t(t) * in.k + i]) << 16;
        std::memcpy(&out[size_t(t) * kk + i], &bits, 4);
      }
  } else {
    const float* src = static_cast<const float*>(in.x);
    for (int t = 0; t < in.tokens; ++t)
      std::memcpy(&out[size_t(t) * kk], src + size_t(t) * in.k, sizeof(float) * in.k);
  }
  return out;
}

struct Prepared {
  std::vector<uint16_t> xb;
  std::vector<float> x;
  std::vector<int8_t> q;
  std::vector<uint8_t> qu, pairs24;
  std::vector<float> scale, xsum;
  std::vector<int32_t> qsum;
  Act8 a8;
  ActF af;
};

// How a call's kernels read the activations.
enum class Acts { INT8, FP32, BF16 };

// The activations in the form the kernels read, built once per call: int8
// codes per (token, group) (INT8), fp32 with group sums (FP32), or the bf16
// values as given (BF16); all zero padded to kk. gather24: the weight is 2:4,
// whose W4A8 kernels gather activations from a pair table (levels with
// pair_table24) or from q + 128; no other kernel reads either.
void prepare(const MatmulOps& ops, Prepared& p, const Input& in, int kk, int group, int groups, Acts mode,
             bool gather24) {
  const int tokens = in.tokens;
  const auto dims = [&](auto& a) {
    a.tokens = tokens;
    a.kk = kk;
    a.groups = groups;
    a.group = group;
  };
  if (mode == Acts::BF16) {
    const uint16_t* src = static_cast<const uint16_t*>(in.x);
    p.xb.assign(size_t(tokens) * kk, 0);
    for (int t = 0; t < tokens; ++t) std::memcpy(&p.xb[size_t(t) * kk], src + size_t(t) * in.k, 2 * size_t(in.k));
    dims(p.af);
    p.af.xb = p.xb.data();
    return;
  }
  p.x = padded_input(in, kk);
  if (mode == Acts::INT8) {
    p.q.assign(size_t(tokens) * kk, 0);
    p.scale.assign(size_t(tokens) * groups, 0.f);
    p.qsum.assign(size_t(tokens) * groups, 0);
    dims(p.a8);
    p.a8.q = p.q.data();
    p.a8.scale = p.scale.data();
    p.a8.qsum = p.qsum.data();
    const float* xs = p.x.data();
    const Act8& a = p.a8;
    parallel_for(tokens, tokens >= 8 ? chunk_for(tokens) : tokens,
                 [&](int lo, int hi) { ops.quantize(xs, lo, hi, a); });
    if (gather24 && ops.pair_table24) {
      p.pairs24.resize(size_t(tokens) * (kk / PAIR_K) * 32);
      uint8_t* out = p.pairs24.data();
      parallel_for(tokens, tokens >= 8 ? chunk_for(tokens) : tokens,
                   [&](int lo, int hi) { ops.pair_table24(a, lo, hi, out); });
      p.a8.pairs24 = out;
    } else if (gather24) {
      p.qu.resize(p.q.size());
      for (size_t i = 0; i < p.q.size(); ++i) p.qu[i] = uint8_t(p.q[i]) ^ 0x80u;
      p.a8.qu = p.qu.data();
    }
  } else {
    p.xsum.assign(size_t(tokens) * groups, 0.f);
    dims(p.af);
    p.af.x = p.x.data();
    p.af.xsum = p.xsum.data();
    ops.group_sums(p.x.data(), 0, tokens, p.af);
  }
}

// fill(yp) writes n fp32 results to yp: y itself, or (out_bf16) a staging buffer that is then rounded into y's
// bf16.
template <typename Fill>
void into_output(const MatmulOps& ops, uintptr_t y, bool out_bf16, size_t n, Fill&& fill) {
  thread_local std::vector<float> staged;
  if (out_bf16) staged.resize(n);
  float* yp = out_bf16 ? staged.data() : ptr<float>(y);
  fill(yp);
  if (out_bf16) ops.to_bf16(yp, ptr<uint16_t>(y), n);
}

// One call of a weight's kernels: activations prepared, then
// kernel(prepared, lo, hi, y, P) over work items [0, n) on the pool.
// x, y and P are addresses the Python side has checked (P may be 0); y holds
// [tokens][out] fp32, or bf16 when out_bf16 (the kernels' fp32 results, rounded).
template <typename Kernel>
void run_call(uintptr_t x, bool bf16, int tokens, int k, int kk, int group, int groups, Acts mode, bool gather24,
              int n, int out, bool out_bf16, const MatmulOps& ops, uintptr_t y, uintptr_t P, Kernel&& kernel) {
  const Input in{ptr<const void>(x), bf16, tokens, k};
  Prepared p;
  prepare(ops, p, in, kk, group, groups, mode, gather24);
  int32_t* pp = ptr<int32_t>(P);
  into_output(ops, y, out_bf16, size_t(tokens) * out,
              [&](float* yp) { parallel_for(n, chunk_for(n), [&](int lo, int hi) { kernel(p, lo, hi, yp, pp); }); });
}

bool is_fast_kind(int kind) { return kind == KIND_24 || kind == KIND_48 || kind == KIND_14 || kind == KIND_DENSE; }

}  // namespace

FastWeight::FastWeight(Array vals_, Array meta_, Array scales_, Array zeros_, const FastParams& params)
    : vals(vals_), meta(meta_), scales(scales_), zeros(zeros_) {
  static_cast<FastParams&>(L) = params;
  if (!is_fast_kind(L.kind) || L.vbytes != fast_vbytes(L.kind) || L.mbytes != fast_mbytes(L.kind))
    throw std::invalid_argument("fast layout: unknown kind, or bytes per pair-step not the kind's");
  const size_t per = size_t(L.blocks) * L.groups * L.steps;
  const size_t meta_bytes = L.kind == KIND_24 ? L.blocks * meta24_stride(L) + 16 : per * L.mbytes;
  const size_t val_bytes = L.kind == KIND_24 ? L.blocks * vals24_stride(L) : per * L.vbytes;
  if (vals.size() != val_bytes || meta.size() != meta_bytes ||
      scales.size() != size_t(L.blocks) * L.groups * ROWS ||
      (!L.symmetric && zeros.size() != size_t(L.blocks) * L.groups * 8) || L.group * L.groups != L.kk ||
      L.steps * PAIR_K != L.group || L.blocks * ROWS < L.out || L.in_features > L.kk)
    throw std::invalid_argument("fast layout: inconsistent buffers");
  L.vals = data_of<uint8_t>(vals, "values");
  L.meta = L.mbytes ? data_of<uint8_t>(meta, "meta") : nullptr;
  L.scales = reinterpret_cast<const uint16_t*>(data_of<int16_t>(scales, "scales"));
  L.zeros = L.symmetric ? nullptr : data_of<uint8_t>(zeros, "zeros");
}

// From this many tokens on, float 2:4 calls run fast24_prefill where the level has it: the crossover with the
// gathering kernels (`nmq bench kernels --batch 32,64,128`). From GEMM_TOKENS on (matmul.py) the Python side
// runs dequantize + a dense GEMM instead.
constexpr int PREFILL24_TOKENS = 64;

void FastWeight::run(uintptr_t x, bool bf16, int tokens, bool w4a8, uintptr_t y, uintptr_t P, bool out_bf16) const {
  if (tokens <= 0) return;
  nb::gil_scoped_release release;
  const MatmulOps& ops = current_level().matmul;
  if (!w4a8 && L.kind == KIND_24 && tokens >= PREFILL24_TOKENS && ops.fast24_prefill && ops.prefill_tiles) {
    const int tiles = (tokens + PREFILL_TILE - 1) / PREFILL_TILE;
    // Reused call after call (no page faults), 64-byte aligned for the kernel's loads.
    thread_local std::vector<float> store;
    store.resize(size_t(tiles) * L.kk * PREFILL_TILE + 16);
    float* xt = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(store.data()) + 63) & ~uintptr_t(63));
    parallel_for(tiles, 1, [&](int lo, int hi) {
      ops.prefill_tiles(ptr<const void>(x), bf16, tokens, L.in_features, L.kk, lo * PREFILL_TILE, hi * PREFILL_TILE, xt);
    });
    // Up to 8 row blocks a task (their decoded weights and one activation tile stay in L2), two tasks a thread.
    const int chunk = std::max(1, std::min(8, L.blocks / (2 * pool_threads())));
    into_output(ops, y, out_bf16, size_t(tokens) * L.out, [&](float* yp) {
      parallel_for(L.blocks, chunk, [&](int lo, int hi) { ops.fast24_prefill(L, xt, tokens, lo, hi, yp); });
    });
    return;
  }
  // bf16 activations keep their precision on the bf16 dot-product kernel.
  const bool bf16_kernel = !w4a8 && bf16 && L.kind == KIND_24 && ops.fast_w4a16_bf16 && cpu_has_avx512_bf16();
  const Acts mode = w4a8 ? Acts::INT8 : bf16_kernel ? Acts::BF16 : Acts::FP32;
  run_call(x, bf16, tokens, L.in_features, L.kk, L.group, L.groups, mode, L.kind == KIND_24, L.blocks, L.out,
           out_bf16, ops, y, P, [&](const Prepared& p, int lo, int hi, float* yp, int32_t* pp) {
             if (mode == Acts::INT8)
               ops.fast_w4a8(L, p.a8, lo, hi, yp, pp);
             else if (mode == Acts::BF16)
               ops.fast_w4a16_bf16(L, p.af, lo, hi, yp);
             else
               ops.fast_w4a16(L, p.af, lo, hi, yp);
           });
}

// Weights from which dequantize runs on the pool: below, on the calling thread, as the GEMM that follows runs
// on PyTorch's threads, and waking nmq's (which then spin) between PyTorch's calls makes the two pools contend
// for the cores; above, the decode itself (tens of milliseconds for a LLaMA-7B MLP weight) outweighs that.
constexpr size_t POOL_DEQUANT_WEIGHTS = size_t(1) << 22;

void FastWeight::dequantize(uintptr_t w) const {
  nb::gil_scoped_release release;
  const MatmulOps& ops = current_level().matmul;
  float* out = ptr<float>(w);
  if (size_t(L.blocks) * ROWS * L.kk < POOL_DEQUANT_WEIGHTS) return ops.fast_dequant(L, 0, L.blocks, out);
  parallel_for(L.blocks, chunk_for(L.blocks), [&](int lo, int hi) { ops.fast_dequant(L, lo, hi, out); });
}

GenericWeight::GenericWeight(Array values_, Array meta_, Array scales_, Array zeros_, Array table_,
                             const GenericParams& params)
    : values(values_), meta(meta_), scales(scales_), zeros(zeros_), table(table_) {
  static_cast<GenericParams&>(L) = params;
  if (L.m < 1 || L.m > GENERIC_MAX_M || L.n < 1 || L.n > L.m || L.bits < 1 || L.bits > GENERIC_MAX_BITS ||
      L.meta_kind < META_DENSE || L.meta_kind > META_RANK || L.meta_width < 0 ||
      L.meta_width > GENERIC_MAX_META_WIDTH)
    throw std::invalid_argument("generic layout: pattern, width or metadata out of range");
  if (values.ndim() != 2 || int(values.shape(0)) != L.out || scales.ndim() != 2 || int(scales.shape(0)) != L.out ||
      int(scales.shape(1)) != L.groups || L.group * L.groups != L.padded_in || L.in_features > L.padded_in ||
      L.padded_in % L.m != 0 || L.group % L.m != 0)
    throw std::invalid_argument("generic layout: inconsistent buffers");
  L.values = data_of<uint8_t>(values, "values");
  L.vstride = int64_t(values.shape(1));
  if (int64_t(L.padded_in) / L.m * L.n * L.bits > L.vstride * 8)
    throw std::invalid_argument("generic layout: values too short");
  L.mstride = meta.ndim() == 2 ? int64_t(meta.shape(1)) : 0;
  L.meta = L.mstride ? data_of<uint8_t>(meta, "meta") : nullptr;
  if (L.meta_kind != META_DENSE && !L.meta) throw std::invalid_argument("generic layout: metadata missing");
  L.scales = reinterpret_cast<const uint16_t*>(data_of<int16_t>(scales, "scales"));
  if (!L.symmetric) {
    if (zeros.ndim() != 2 || int(zeros.shape(0)) != L.out) throw std::invalid_argument("generic layout: zeros");
    L.zeros = data_of<uint8_t>(zeros, "zeros");
    L.zstride = int64_t(zeros.shape(1));
  }
  L.table = data_or_null<uint8_t>(table, "rank table");
  if (L.meta_kind == META_RANK && !L.table) throw std::invalid_argument("generic layout: rank table missing");
}

void GenericWeight::run(uintptr_t x, bool bf16, int tokens, bool w4a8, uintptr_t y, uintptr_t P,
                        bool out_bf16) const {
  if (tokens <= 0) return;
  nb::gil_scoped_release release;
  const MatmulOps& ops = current_level().matmul;
  const Acts mode = w4a8 ? Acts::INT8 : Acts::FP32;
  run_call(x, bf16, tokens, L.in_features, L.padded_in, L.group, L.groups, mode, false, L.out, L.out, out_bf16, ops,
           y, P, [&](const Prepared& p, int lo, int hi, float* yp, int32_t* pp) {
             if (w4a8)
               ops.generic_w4a8(L, p.a8, lo, hi, yp, pp);
             else
               ops.generic_w4a16(L, p.af, lo, hi, yp);
           });
}

void GenericWeight::dequantize(uintptr_t w) const {
  nb::gil_scoped_release release;
  const MatmulOps& ops = current_level().matmul;
  float* out = ptr<float>(w);
  if (size_t(L.out) * L.padded_in < POOL_DEQUANT_WEIGHTS) return ops.generic_dequant(L, 0, L.out, out);
  parallel_for(L.out, chunk_for(L.out), [&](int lo, int hi) { ops.generic_dequant(L, lo, hi, out); });
}

}  // namespace nmq
