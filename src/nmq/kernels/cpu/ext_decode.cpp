// The decode step's entry points: addresses of buffers the Python side
// (nmq.backends.cpu.decode) has checked once; `bf16` says whether they hold
// bf16 bits or fp32.
#include <stdexcept>
#include <vector>

#include "ext.h"

namespace nmq {
namespace {

void run_attention(const Attn& a) {
  const DecodeOps& ops = current_level().decode;
  parallel_for(a.heads, std::max(1, a.heads / (4 * pool_threads())), [&](int lo, int hi) { ops.attend(a, lo, hi); });
}

}  // namespace

void attend(uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t out, int heads, int kv_heads, int length, int dim,
            int64_t head_stride, bool bf16, float scale) {
  if (heads <= 0 || kv_heads <= 0 || heads % kv_heads || length < 0 || dim <= 0)
    throw std::invalid_argument("attend: inconsistent shape");
  Attn a;
  a.heads = heads;
  a.kv_heads = kv_heads;
  a.length = length;
  a.dim = dim;
  a.head_stride = head_stride;
  a.bf16 = bf16;
  a.q = ptr<const float>(q);
  a.k = ptr<const void>(k);
  a.v = ptr<const void>(v);
  a.out = ptr<void>(out);
  a.scale = scale;
  run_attention(a);
}

void attend_step(uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t cos, uintptr_t sin, uintptr_t k_cache,
                 uintptr_t v_cache, uintptr_t out, int heads, int kv_heads, int dim, int pos, int64_t head_stride,
                 bool bf16, float scale) {
  if (heads <= 0 || kv_heads <= 0 || heads % kv_heads || dim <= 0 || dim % 2 || pos < 0 ||
      head_stride < int64_t(pos + 1) * dim)
    throw std::invalid_argument("attend_step: inconsistent shape");
  const DecodeOps& ops = current_level().decode;
  const size_t es = bf16 ? 2 : 4;
  const void* cs = ptr<const char>(cos) + size_t(pos) * dim * es;
  const void* sn = ptr<const char>(sin) + size_t(pos) * dim * es;
  thread_local std::vector<float> qf;
  qf.resize(size_t(heads) * dim);
  ops.rotate_heads(ptr<void>(q), cs, sn, qf.data(), dim, true, heads, dim, bf16);
  ops.rotate_heads(ptr<void>(k), cs, sn, ptr<char>(k_cache) + size_t(pos) * dim * es, head_stride, false, kv_heads,
                   dim, bf16);
  ops.rotate_heads(ptr<void>(v), nullptr, nullptr, ptr<char>(v_cache) + size_t(pos) * dim * es, head_stride, false,
                   kv_heads, dim, bf16);
  Attn a;
  a.heads = heads;
  a.kv_heads = kv_heads;
  a.length = pos + 1;
  a.dim = dim;
  a.head_stride = head_stride;
  a.bf16 = bf16;
  a.q = qf.data();
  a.k = ptr<const void>(k_cache);
  a.v = ptr<const void>(v_cache);
  a.out = ptr<void>(out);
  a.out_narrow = true;
  a.scale = scale;
  run_attention(a);
}

void add_rms_norm(uintptr_t h, uintptr_t add, uintptr_t w, uintptr_t out, int n, float eps, bool bf16) {
  current_level().decode.add_rms_norm(ptr<void>(h), ptr<const void>(add), ptr<const void>(w), ptr<void>(out), n, eps,
                                      bf16);
}

void silu_mul(uintptr_t g, uintptr_t u, uintptr_t out, int n, bool bf16) {
  current_level().decode.silu_mul(ptr<const void>(g), ptr<const void>(u), ptr<void>(out), n, bf16);
}

}  // namespace nmq
