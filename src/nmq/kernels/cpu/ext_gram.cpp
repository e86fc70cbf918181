// The entry point of the bf16 Gram kernel (nmq.backends.cpu.gram).
#include <stdexcept>
#include <string>

#include "ext.h"

namespace nmq {

// The avx512 level always holds gram_bf16; the CPU may still lack AVX-512 BF16.
bool has_gram_bf16() { return current_level().gram.gram_bf16 != nullptr && cpu_has_avx512_bf16(); }

void gram_bf16(uintptr_t packed, int panels, int pairs, uintptr_t c, int64_t ldc) {
  const Level& level = current_level();
  if (!has_gram_bf16())
    throw std::invalid_argument(std::string("gram_bf16 needs AVX-512 BF16; the ISA level is ") + level.name);
  if (panels < 1 || pairs < 1 || ldc < 16 * int64_t(panels))
    throw std::invalid_argument("gram_bf16: need panels >= 1, pairs >= 1, ldc >= 16 * panels");
  const int tiles = (panels + GRAM_TILE_PANELS - 1) / GRAM_TILE_PANELS;
  parallel_for(tiles, 1, [&](int lo, int hi) {
    level.gram.gram_bf16(ptr<const uint16_t>(packed), panels, pairs, ptr<float>(c), ldc, lo, hi);
  });
}

}  // namespace nmq
