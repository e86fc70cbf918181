// nmq._nmq_cpu: runtime ISA dispatch, a small persistent thread pool, and the
// Python entry points. Buffers arrive through DLPack/the buffer protocol
// (numpy arrays or torch CPU tensors); nothing here links against libtorch.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#include <immintrin.h>
#endif
#if defined(__linux__)
#include <sched.h>
#endif

#include "kernels.h"

namespace nb = nanobind;
using namespace nmq;

namespace {

// --- ISA detection -------------------------------------------------------------

struct Cpu {
  bool avx2 = false, avx512 = false, avx512_bf16 = false;
};

Cpu detect() {
  Cpu c;
#if defined(__x86_64__) || defined(_M_X64)
  unsigned a, b, cc, d;
  if (!__get_cpuid(1, &a, &b, &cc, &d)) return c;
  const bool osxsave = cc & (1u << 27), fma = cc & (1u << 12), f16c = cc & (1u << 29), popcnt = cc & (1u << 23);
  if (!osxsave) return c;
  unsigned lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  const bool ymm_os = (lo & 0x6) == 0x6, zmm_os = (lo & 0xE6) == 0xE6;
  if (!__get_cpuid_count(7, 0, &a, &b, &cc, &d)) return c;
  const bool avx2 = b & (1u << 5), bmi2 = b & (1u << 8);
  const bool f = b & (1u << 16), dq = b & (1u << 17), bw = b & (1u << 30), vl = b & (1u << 31);
  const bool vbmi = cc & (1u << 1), vbmi2 = cc & (1u << 6), vnni = cc & (1u << 11);
  c.avx2 = ymm_os && avx2 && fma && f16c && bmi2 && popcnt;
  c.avx512 = c.avx2 && zmm_os && f && dq && bw && vl && vbmi && vbmi2 && vnni;
  if (c.avx512 && __get_cpuid_count(7, 1, &a, &b, &cc, &d)) c.avx512_bf16 = a & (1u << 5);
#endif
  return c;
}

std::vector<std::string> levels() {
  Cpu c = detect();
  std::vector<std::string> out;
  if (c.avx512 && ops_avx512()) out.push_back("avx512");
  if (c.avx2 && ops_avx2()) out.push_back("avx2");
  out.push_back("portable");
  return out;
}

const Ops* ops_for(const std::string& name) {
  if (name == "avx512") return ops_avx512();
  if (name == "avx2") return ops_avx2();
  if (name == "portable") return ops_portable();
  return nullptr;
}

std::mutex g_isa_mu;
const Ops* g_ops = nullptr;

const Ops* current_ops() {
  std::lock_guard<std::mutex> lock(g_isa_mu);
  if (!g_ops) g_ops = ops_for(levels().front());
  return g_ops;
}

void set_isa(const std::string& name) {
  auto ok = levels();
  if (std::find(ok.begin(), ok.end(), name) == ok.end()) {
    std::string acc;
    for (auto& s : ok) acc += (acc.empty() ? "" : ", ") + s;
    throw std::invalid_argument("ISA level '" + name + "' is not available on this CPU; available: " + acc);
  }
  std::lock_guard<std::mutex> lock(g_isa_mu);
  g_ops = ops_for(name);
}

// --- thread pool -----------------------------------------------------------------

int default_threads() {
#if defined(__linux__)
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
#endif
  return std::max(1u, std::thread::hardware_concurrency());
}

int spin_us() {
  static const int us = [] {
    const char* env = std::getenv("NMQ_SPIN_US");
    return env ? std::max(0, std::atoi(env)) : 2000;
  }();
  return us;
}

inline void cpu_relax() {
#if defined(__x86_64__) || defined(_M_X64)
  _mm_pause();
#endif
}

// Workers spin for NMQ_SPIN_US microseconds (default 2000) after each job
// (back-to-back layers then start without a futex wake-up) and sleep
// otherwise, so idle nmq threads do not compete with PyTorch's own pool.
// Work is handed out in chunks from a shared counter: on a machine shared
// with other processes a descheduled worker delays nothing but the chunk it
// holds, and one that wakes late finds no work and leaves.
class Pool {
 public:
  ~Pool() { resize(1); }

  int size() {
    std::lock_guard<std::mutex> lock(run_mu_);
    return int(workers_.size()) + 1;
  }

  void resize(int n) {
    std::lock_guard<std::mutex> lock(run_mu_);
    n = std::max(1, n);
    if (int(workers_.size()) + 1 == n) return;
    {
      std::lock_guard<std::mutex> l(mu_);
      stop_ = true;
      gen_.fetch_add(1);
    }
    cv_.notify_all();
    for (auto& w : workers_) w.join();
    workers_.clear();
    stop_ = false;
    const uint64_t g0 = gen_.load();
    for (int i = 1; i < n; ++i) workers_.emplace_back([this, g0] { loop(g0); });
  }

  // fn(lo, hi) over [0, n) in chunks of `chunk`, on all threads.
  void run(int n, int chunk, const std::function<void(int, int)>& fn) {
    std::lock_guard<std::mutex> lock(run_mu_);
    chunk = std::max(1, chunk);
    if (workers_.empty() || n <= chunk) {
      if (n > 0) fn(0, n);
      return;
    }
    job_ = &fn;
    n_ = n;
    chunk_ = chunk;
    next_.store(0);
    closed_.store(false);
    {
      std::lock_guard<std::mutex> l(mu_);
      gen_.fetch_add(1);
    }
    cv_.notify_all();
    work();
    closed_.store(true);
    while (active_.load() != 0) cpu_relax();
    job_ = nullptr;
  }

 private:
  void work() {
    for (;;) {
      int lo = next_.fetch_add(chunk_);
      if (lo >= n_) return;
      (*job_)(lo, std::min(n_, lo + chunk_));
    }
  }

  void loop(uint64_t seen) {
    for (;;) {
      // Spin for a while first: a model's next layer usually comes within a
      // millisecond, and waking a sleeping thread (a futex, on a VM an
      // interrupt to the host) costs a good part of a small layer's time.
      const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(spin_us());
      while (gen_.load() == seen) {
        for (int i = 0; i < 64 && gen_.load() == seen; ++i) cpu_relax();
        if (std::chrono::steady_clock::now() >= until) break;
      }
      if (gen_.load() == seen) {
        std::unique_lock<std::mutex> l(mu_);
        cv_.wait(l, [&] { return gen_.load() != seen; });
      }
      seen = gen_.load();
      if (stop_) return;
      active_.fetch_add(1);
      if (!closed_.load()) work();
      active_.fetch_sub(1);
    }
  }

  std::mutex run_mu_, mu_;
  std::condition_variable cv_;
  std::vector<std::thread> workers_;
  std::atomic<uint64_t> gen_{0};
  std::atomic<int> next_{0}, active_{0};
  std::atomic<bool> closed_{true};
  const std::function<void(int, int)>* job_ = nullptr;
  int n_ = 0, chunk_ = 1;
  bool stop_ = false;
};

Pool& pool() {
  static Pool* p = [] {
    auto* q = new Pool();
    int n = default_threads();
    if (const char* env = std::getenv("NMQ_THREADS")) {
      int v = std::atoi(env);
      if (v > 0) n = v;
    }
    q->resize(n);
    return q;
  }();
  return *p;
}

// Chunks small enough to balance threads that the OS shares with others.
inline int chunk_for(int n) { return std::max(1, n / (8 * pool().size())); }

// --- buffers -----------------------------------------------------------------------

using Array = nb::ndarray<nb::device::cpu, nb::c_contig>;

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
void prepare(const Ops* ops, Prepared& p, const Input& in, int kk, int group, int groups, Acts mode, bool gather24) {
  const int tokens = in.tokens;
  if (mode == Acts::BF16) {
    const uint16_t* src = static_cast<const uint16_t*>(in.x);
    p.xb.assign(size_t(tokens) * kk, 0);
    for (int t = 0; t < tokens; ++t) std::memcpy(&p.xb[size_t(t) * kk], src + size_t(t) * in.k, 2 * size_t(in.k));
    p.af = ActF{tokens, kk, groups, group, nullptr, nullptr, p.xb.data()};
    return;
  }
  p.x = padded_input(in, kk);
  if (mode == Acts::INT8) {
    p.q.assign(size_t(tokens) * kk, 0);
    p.scale.assign(size_t(tokens) * groups, 0.f);
    p.qsum.assign(size_t(tokens) * groups, 0);
    p.a8 = Act8{tokens, kk, groups, group, p.q.data(), p.scale.data(), p.qsum.data()};
    const float* xs = p.x.data();
    const Act8& a = p.a8;
    pool().run(tokens, tokens >= 8 ? chunk_for(tokens) : tokens,
               [&](int lo, int hi) { ops->quantize(xs, lo, hi, a); });
    if (gather24 && ops->pair_table24) {
      p.pairs24.resize(size_t(tokens) * (kk / PAIR_K) * 32);
      uint8_t* out = p.pairs24.data();
      pool().run(tokens, tokens >= 8 ? chunk_for(tokens) : tokens,
                 [&](int lo, int hi) { ops->pair_table24(a, lo, hi, out); });
      p.a8.pairs24 = out;
    } else if (gather24) {
      p.qu.resize(p.q.size());
      for (size_t i = 0; i < p.q.size(); ++i) p.qu[i] = uint8_t(p.q[i]) ^ 0x80u;
      p.a8.qu = p.qu.data();
    }
  } else {
    p.xsum.assign(size_t(tokens) * groups, 0.f);
    p.af = ActF{tokens, kk, groups, group, p.x.data(), p.xsum.data()};
    ops->group_sums(p.x.data(), 0, tokens, p.af);
  }
}

template <typename T>
T* ptr(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

// One call of a weight's kernels: activations prepared, then
// kernel(prepared, lo, hi, y, P) over work items [0, n) on the pool.
// x, y and P are addresses the Python side has checked (P may be 0); y holds
// [tokens][out] fp32, or bf16 when out_bf16 (the kernels' fp32 results, rounded).
template <typename Kernel>
void run_call(uintptr_t x, bool bf16, int tokens, int k, int kk, int group, int groups, Acts mode, bool gather24,
              int n, int out, bool out_bf16, const Ops* ops, uintptr_t y, uintptr_t P, Kernel&& kernel) {
  const Input in{ptr<const void>(x), bf16, tokens, k};
  Prepared p;
  prepare(ops, p, in, kk, group, groups, mode, gather24);
  thread_local std::vector<float> staged;
  if (out_bf16) staged.resize(size_t(tokens) * out);
  float* yp = out_bf16 ? staged.data() : ptr<float>(y);
  int32_t* pp = ptr<int32_t>(P);
  pool().run(n, chunk_for(n), [&](int lo, int hi) { kernel(p, lo, hi, yp, pp); });
  if (out_bf16) ops->to_bf16(yp, ptr<uint16_t>(y), size_t(tokens) * out);
}

// A weight in the fast layout, checked once when built; holds its buffers.
struct FastWeight {
  FastLayout L;
  int k = 0;
  Array vals, meta, scales, zeros;

  // params: kind, out, blocks, kk, group, groups, steps, vbytes, mbytes, symmetric, k
  FastWeight(Array vals_, Array meta_, Array scales_, Array zeros_, const std::vector<int64_t>& prm)
      : vals(vals_), meta(meta_), scales(scales_), zeros(zeros_) {
    if (prm.size() != 11) throw std::invalid_argument("fast layout: expected 11 parameters");
    L.kind = int(prm[0]);
    L.out = int(prm[1]);
    L.blocks = int(prm[2]);
    L.kk = int(prm[3]);
    L.group = int(prm[4]);
    L.groups = int(prm[5]);
    L.steps = int(prm[6]);
    L.vbytes = int(prm[7]);
    L.mbytes = int(prm[8]);
    L.symmetric = prm[9] != 0;
    k = int(prm[10]);
    const size_t per = size_t(L.blocks) * L.groups * L.steps;
    const size_t meta_bytes = L.kind == KIND_24 ? L.blocks * meta24_stride(L) + 16 : per * L.mbytes;
    const size_t val_bytes = L.kind == KIND_24 ? L.blocks * vals24_stride(L) : per * L.vbytes;
    if (vals.size() != val_bytes || meta.size() != meta_bytes ||
        scales.size() != size_t(L.blocks) * L.groups * ROWS ||
        (!L.symmetric && zeros.size() != size_t(L.blocks) * L.groups * 8) || L.group * L.groups != L.kk ||
        L.steps * PAIR_K != L.group || L.blocks * ROWS < L.out || k > L.kk)
      throw std::invalid_argument("fast layout: inconsistent buffers");
    L.vals = data_of<uint8_t>(vals, "values");
    L.meta = L.mbytes ? data_of<uint8_t>(meta, "meta") : nullptr;
    L.scales = reinterpret_cast<const uint16_t*>(data_of<int16_t>(scales, "scales"));
    L.zeros = L.symmetric ? nullptr : data_of<uint8_t>(zeros, "zeros");
  }

  // x [tokens][k] -> y [tokens][out] (fp32), P [tokens][out][groups] when not 0.
  void run(uintptr_t x, bool bf16, int tokens, bool w4a8, uintptr_t y, uintptr_t P, bool out_bf16) const {
    if (tokens <= 0) return;
    nb::gil_scoped_release release;
    const Ops* ops = current_ops();
    // bf16 activations keep their precision on the bf16 dot-product kernel.
    const bool bf16_kernel =
        !w4a8 && bf16 && L.kind == KIND_24 && ops->fast_w4a16_bf16 && cpu_has_avx512_bf16();
    const Acts mode = w4a8 ? Acts::INT8 : bf16_kernel ? Acts::BF16 : Acts::FP32;
    run_call(x, bf16, tokens, k, L.kk, L.group, L.groups, mode, L.kind == KIND_24, L.blocks, L.out, out_bf16, ops, y, P,
             [&](const Prepared& p, int lo, int hi, float* yp, int32_t* pp) {
               if (mode == Acts::INT8)
                 ops->fast_w4a8(L, p.a8, lo, hi, yp, pp);
               else if (mode == Acts::BF16)
                 ops->fast_w4a16_bf16(L, p.af, lo, hi, yp);
               else
                 ops->fast_w4a16(L, p.af, lo, hi, yp);
             });
  }
};

// A weight in the canonical layout (any N:M, any width), decoded row by row.
struct GenericWeight {
  GenericLayout L;
  int k = 0;
  Array values, meta, scales, zeros, table;

  // params: out, k, padded_in, n, m, bits, group, groups, meta_kind, meta_width, symmetric
  GenericWeight(Array values_, Array meta_, Array scales_, Array zeros_, Array table_,
                const std::vector<int64_t>& prm)
      : values(values_), meta(meta_), scales(scales_), zeros(zeros_), table(table_) {
    if (prm.size() != 11) throw std::invalid_argument("generic layout: expected 11 parameters");
    L.out = int(prm[0]);
    k = int(prm[1]);
    L.padded_in = int(prm[2]);
    L.n = int(prm[3]);
    L.m = int(prm[4]);
    L.bits = int(prm[5]);
    L.group = int(prm[6]);
    L.groups = int(prm[7]);
    L.meta_kind = int(prm[8]);
    L.meta_width = int(prm[9]);
    L.symmetric = prm[10] != 0;
    if (values.ndim() != 2 || int(values.shape(0)) != L.out || scales.ndim() != 2 ||
        int(scales.shape(0)) != L.out || int(scales.shape(1)) != L.groups || L.group * L.groups != L.padded_in ||
        k > L.padded_in || L.padded_in % L.m != 0 || L.group % L.m != 0)
      throw std::invalid_argument("generic layout: inconsistent buffers");
    L.values = data_of<uint8_t>(values, "values");
    L.vstride = int64_t(values.shape(1));
    if (int64_t(L.padded_in) / L.m * L.n * L.bits > L.vstride * 8)
      throw std::invalid_argument("generic layout: values too short");
    L.mstride = meta.ndim() == 2 ? int64_t(meta.shape(1)) : 0;
    L.meta = L.mstride ? data_of<uint8_t>(meta, "meta") : nullptr;
    if (L.meta_kind != 0 && !L.meta) throw std::invalid_argument("generic layout: metadata missing");
    L.scales = reinterpret_cast<const uint16_t*>(data_of<int16_t>(scales, "scales"));
    if (!L.symmetric) {
      if (zeros.ndim() != 2 || int(zeros.shape(0)) != L.out) throw std::invalid_argument("generic layout: zeros");
      L.zeros = data_of<uint8_t>(zeros, "zeros");
      L.zstride = int64_t(zeros.shape(1));
    }
    L.table = data_or_null<uint8_t>(table, "rank table");
    if (L.meta_kind == 2 && !L.table) throw std::invalid_argument("generic layout: rank table missing");
  }

  void run(uintptr_t x, bool bf16, int tokens, bool w4a8, uintptr_t y, uintptr_t P, bool out_bf16) const {
    if (tokens <= 0) return;
    nb::gil_scoped_release release;
    const Ops* ops = current_ops();
    const Acts mode = w4a8 ? Acts::INT8 : Acts::FP32;
    run_call(x, bf16, tokens, k, L.padded_in, L.group, L.groups, mode, false, L.out, L.out, out_bf16, ops, y, P,
             [&](const Prepared& p, int lo, int hi, float* yp, int32_t* pp) {
               if (w4a8)
                 ops->generic_w4a8(L, p.a8, lo, hi, yp, pp);
               else
                 ops->generic_w4a16(L, p.af, lo, hi, yp);
             });
  }
};

// --- decode step ----------------------------------------------------------------
// Entry points take addresses of buffers the Python side (nmq.backends.cpu_decode)
// has checked once; the dtype flag says whether they hold bf16 bits or fp32.

void run_attention(const Attn& a) {
  const Ops* ops = current_ops();
  pool().run(a.heads, std::max(1, a.heads / (4 * pool().size())), [&](int lo, int hi) { ops->attend(a, lo, hi); });
}

// q fp32 [heads][dim] over k, v ([kv_heads] rows of [length][dim], head_stride apart) -> out fp32.
void attend_call(uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t out, const std::vector<int64_t>& prm, float scale) {
  if (prm.size() != 6) throw std::invalid_argument("attend: expected 6 parameters");
  Attn a;
  a.heads = int(prm[0]);
  a.kv_heads = int(prm[1]);
  a.length = int(prm[2]);
  a.dim = int(prm[3]);
  a.head_stride = prm[4];
  a.bf16 = prm[5] != 0;
  if (a.heads <= 0 || a.kv_heads <= 0 || a.heads % a.kv_heads || a.length < 0 || a.dim <= 0)
    throw std::invalid_argument("attend: inconsistent shape");
  a.q = ptr<const float>(q);
  a.k = ptr<const void>(k);
  a.v = ptr<const void>(v);
  a.out = ptr<void>(out);
  a.scale = scale;
  nb::gil_scoped_release release;
  run_attention(a);
}

// One position's attention in a decode step: rotate q and k (cos/sin of the
// position), write k and v into the layer's cache at `pos`, attend over
// positions 0..pos, write the heads' outputs to out in the model's dtype.
// prm: heads, kv_heads, dim, pos, head_stride (cache elements between heads), bf16.
void attend_step(uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t cos, uintptr_t sin, uintptr_t kc, uintptr_t vc,
                 uintptr_t out, const std::vector<int64_t>& prm, float scale) {
  if (prm.size() != 6) throw std::invalid_argument("attend_step: expected 6 parameters");
  const int heads = int(prm[0]), kv_heads = int(prm[1]), dim = int(prm[2]), pos = int(prm[3]);
  const int64_t stride = prm[4];
  const bool bf16 = prm[5] != 0;
  if (heads <= 0 || kv_heads <= 0 || heads % kv_heads || dim <= 0 || dim % 2 || pos < 0 || stride < int64_t(pos + 1) * dim)
    throw std::invalid_argument("attend_step: inconsistent shape");
  nb::gil_scoped_release release;
  const Ops* ops = current_ops();
  const size_t es = bf16 ? 2 : 4;
  const void* cs = ptr<const char>(cos) + size_t(pos) * dim * es;
  const void* sn = ptr<const char>(sin) + size_t(pos) * dim * es;
  thread_local std::vector<float> qf;
  qf.resize(size_t(heads) * dim);
  ops->rotate_heads(ptr<void>(q), cs, sn, qf.data(), dim, true, heads, dim, bf16);
  ops->rotate_heads(ptr<void>(k), cs, sn, ptr<char>(kc) + size_t(pos) * dim * es, stride, false, kv_heads, dim, bf16);
  ops->rotate_heads(ptr<void>(v), nullptr, nullptr, ptr<char>(vc) + size_t(pos) * dim * es, stride, false, kv_heads,
                    dim, bf16);
  Attn a;
  a.heads = heads;
  a.kv_heads = kv_heads;
  a.length = pos + 1;
  a.dim = dim;
  a.head_stride = stride;
  a.bf16 = bf16;
  a.q = qf.data();
  a.k = ptr<const void>(kc);
  a.v = ptr<const void>(vc);
  a.out = ptr<void>(out);
  a.out_narrow = true;
  a.scale = scale;
  run_attention(a);
}

}  // namespace

bool nmq::cpu_has_avx512_bf16() {
  static const bool has = detect().avx512_bf16;
  return has;
}

NB_MODULE(_nmq_cpu, m) {
  m.doc() = "nmq CPU kernels: N:M sparse low-bit matmul with runtime ISA dispatch";
  m.def("isa_levels", &levels, "ISA levels this CPU can run, best first");
  m.def("set_isa", &set_isa, "Force an ISA level: avx512, avx2 or portable");
  m.def("get_isa", [] { return std::string(current_ops()->name); });
  m.def("set_threads", [](int n) { pool().resize(n); }, "Threads the kernels use (the caller included)");
  m.def("get_threads", [] { return pool().size(); });
  m.def("attend", &attend_call, "Attention of one position over a KV cache (addresses; see nmq.backends.cpu_decode)");
  m.def("attend_step", &attend_step, "Rotary, KV cache write and attention of one decode position (addresses)");
  m.def("add_rms_norm", [](uintptr_t h, uintptr_t add, uintptr_t w, uintptr_t out, int n, float eps, bool bf16) {
    current_ops()->add_rms_norm(ptr<void>(h), ptr<const void>(add), ptr<const void>(w), ptr<void>(out), n, eps, bf16);
  }, "h += add (add may be 0), out = weight * rmsnorm(h) (addresses)");
  m.def("silu_mul", [](uintptr_t g, uintptr_t u, uintptr_t out, int n, bool bf16) {
    current_ops()->silu_mul(ptr<const void>(g), ptr<const void>(u), ptr<void>(out), n, bf16);
  }, "out = silu(g) * u (addresses)");
  // The avx512 table always holds gram_bf16; the CPU may still lack AVX-512 BF16.
  static const auto gram_ready = [] { return current_ops()->gram_bf16 != nullptr && cpu_has_avx512_bf16(); };
  m.def("has_gram_bf16", gram_ready, "Whether gram_bf16 runs at the current ISA level");
  m.def("gram_bf16", [](uintptr_t packed, int panels, int pairs, uintptr_t c, int64_t ldc) {
    const Ops* ops = current_ops();
    if (!gram_ready())
      throw std::invalid_argument(std::string("gram_bf16 needs AVX-512 BF16; the ISA level is ") + ops->name);
    if (panels < 1 || pairs < 1 || ldc < 16 * int64_t(panels))
      throw std::invalid_argument("gram_bf16: need panels >= 1, pairs >= 1, ldc >= 16 * panels");
    const int tiles = (panels + GRAM_TILE_PANELS - 1) / GRAM_TILE_PANELS;
    pool().run(tiles, 1, [&](int lo, int hi) {
      ops->gram_bf16(ptr<const uint16_t>(packed), panels, pairs, ptr<float>(c), ldc, lo, hi);
    });
  }, "c [16 panels]^2 fp32 += X^T X of bf16 X packed [panels][pairs][16][2] (addresses; see nmq.backends.cpu_gram)");
  // run(x, bf16, tokens, w4a8, y, P, out_bf16): x, y and P are addresses of
  // contiguous CPU buffers ([tokens][k] fp32 or bf16, [tokens][out] fp32 or
  // bf16, [tokens][out][groups] int32 or 0) that the caller has checked;
  // passing addresses keeps a call to a few microseconds.
  nb::class_<FastWeight>(m, "FastWeight")
      .def(nb::init<Array, Array, Array, Array, const std::vector<int64_t>&>())
      .def("run", &FastWeight::run);
  nb::class_<GenericWeight>(m, "GenericWeight")
      .def(nb::init<Array, Array, Array, Array, Array, const std::vector<int64_t>&>())
      .def("run", &GenericWeight::run);
}
