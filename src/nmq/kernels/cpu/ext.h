// What the parts of the extension (ext_*.cpp) offer each other and the
// bindings (nmq_cpu.cpp). Plain C++: buffers arrive as addresses the Python
// side has checked, so nothing here needs Python or libtorch.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "kernels.h"

namespace nmq {

// --- ISA levels (ext_isa.cpp) ------------------------------------------------------

// Levels this CPU and build can run, best first.
std::vector<std::string> isa_levels();
// Throws std::invalid_argument for a level not in isa_levels().
void set_isa(const std::string& name);
// The level in use: the forced one, else the best.
const Level& current_level();
bool cpu_has_avx512_bf16();

// --- thread pool (ext_pool.cpp) ----------------------------------------------------

// fn(lo, hi) over [0, n) in chunks of `chunk`, on all of the pool's threads.
void parallel_for(int n, int chunk, const std::function<void(int, int)>& fn);
// Threads the kernels use, the caller included.
int pool_threads();
void set_pool_threads(int n);
// Chunks small enough to balance threads that the OS shares with others.
inline int chunk_for(int n) { return std::max(1, n / (8 * pool_threads())); }

template <typename T>
T* ptr(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

// --- decode step (ext_decode.cpp) --------------------------------------------------

// q fp32 [heads][dim] over k, v (kv_heads rows of [length][dim], head_stride
// elements apart; bf16 bits or fp32) -> out fp32 [heads][dim].
void attend(uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t out, int heads, int kv_heads, int length, int dim,
            int64_t head_stride, bool bf16, float scale);
// One position's attention in a decode step: rotate q and k (cos/sin of the
// position), write k and v into the layer's cache at `pos`, attend over
// positions 0..pos, write the heads' outputs to out in the model's dtype.
void attend_step(uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t cos, uintptr_t sin, uintptr_t k_cache,
                 uintptr_t v_cache, uintptr_t out, int heads, int kv_heads, int dim, int pos, int64_t head_stride,
                 bool bf16, float scale);
void add_rms_norm(uintptr_t h, uintptr_t add, uintptr_t w, uintptr_t out, int n, float eps, bool bf16);
void silu_mul(uintptr_t g, uintptr_t u, uintptr_t out, int n, bool bf16);

// --- Gram matrices (ext_gram.cpp) --------------------------------------------------

// Whether gram_bf16 runs at the current level.
bool has_gram_bf16();
// c [16 panels]^2 fp32 += X^T X of bf16 X packed [panels][pairs][16][2].
void gram_bf16(uintptr_t packed, int panels, int pairs, uintptr_t c, int64_t ldc);

}  // namespace nmq
