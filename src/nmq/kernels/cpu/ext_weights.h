// Weights as the extension holds them: a layout's numbers, checked once when
// built, over the buffers prepack made (kept alive here).
#pragma once

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include <cstdint>

#include "kernels.h"

namespace nmq {

using Array = nanobind::ndarray<nanobind::device::cpu, nanobind::c_contig>;

// run(x, bf16, tokens, w4a8, y, P, out_bf16): x, y and P are addresses of
// contiguous CPU buffers ([tokens][k] fp32 or bf16, [tokens][out] fp32 or
// bf16, [tokens][out][groups] int32 or 0) that the caller has checked;
// passing addresses keeps a call to a few microseconds.

// dequantize(w): w is the address of a contiguous fp32 buffer [out][kk] (fast) or [out][padded_in] (canonical)
// that the caller allocated; filled on the calling thread, or on the pool for large weights (ext_weights.cpp).

// A weight in the fast layout.
struct FastWeight {
  FastLayout L;
  Array vals, meta, scales, zeros;

  FastWeight(Array vals, Array meta, Array scales, Array zeros, const FastParams& params);
  void run(uintptr_t x, bool bf16, int tokens, bool w4a8, uintptr_t y, uintptr_t P, bool out_bf16) const;
  void dequantize(uintptr_t w) const;
};

// A weight in the canonical layout (any N:M, any width), decoded row by row.
struct GenericWeight {
  GenericLayout L;
  Array values, meta, scales, zeros, table;

  GenericWeight(Array values, Array meta, Array scales, Array zeros, Array table, const GenericParams& params);
  void run(uintptr_t x, bool bf16, int tokens, bool w4a8, uintptr_t y, uintptr_t P, bool out_bf16) const;
  void dequantize(uintptr_t w) const;
};

}  // namespace nmq
