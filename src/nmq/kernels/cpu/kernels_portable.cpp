// The portable level: plain C++ only, built without any -m flag.
#define NMQ_NS portable
#include "kernels_impl.h"

namespace nmq {
const Ops* ops_portable() {
  static const Ops ops = {"portable", portable::quantize, portable::group_sums, portable::fast_w4a8,
                          portable::fast_w4a16, nullptr, portable::generic_w4a8, portable::generic_w4a16, nullptr, portable::attend,
                          portable::add_rms_norm, portable::rotate_heads, portable::silu_mul, portable::to_bf16_n,
                          nullptr};
  return &ops;
}
}  // namespace nmq
