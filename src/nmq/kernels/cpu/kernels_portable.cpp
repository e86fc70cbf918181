// The portable level: plain C++ only, built without any -m flag.
#define NMQ_NS portable
#include "kernels_impl.h"

namespace nmq {
const Level* level_portable() {
  static const Level level = [] {
    Level l;
    l.name = "portable";
    l.matmul.quantize = portable::quantize;
    l.matmul.group_sums = portable::group_sums;
    l.matmul.fast_w4a8 = portable::fast_w4a8;
    l.matmul.fast_w4a16 = portable::fast_w4a16;
    l.matmul.generic_w4a8 = portable::generic_w4a8;
    l.matmul.generic_w4a16 = portable::generic_w4a16;
    l.matmul.fast_dequant = portable::fast_dequant;
    l.matmul.generic_dequant = portable::generic_dequant;
    l.matmul.to_bf16 = portable::to_bf16_n;
    l.decode = portable::decode_ops();
    return l;
  }();
  return &level;
}
}  // namespace nmq
