// Which ISA levels this CPU runs (cpuid, and xgetbv for the OS's register
// state), and the level the kernels use.
#include <algorithm>
#include <mutex>
#include <stdexcept>

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#endif

#include "ext.h"

namespace nmq {
namespace {

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

const Level* level_for(const std::string& name) {
  if (name == "avx512") return level_avx512();
  if (name == "avx2") return level_avx2();
  if (name == "portable") return level_portable();
  return nullptr;
}

std::mutex g_isa_mu;
const Level* g_level = nullptr;

}  // namespace

std::vector<std::string> isa_levels() {
  Cpu c = detect();
  std::vector<std::string> out;
  if (c.avx512 && level_avx512()) out.push_back("avx512");
  if (c.avx2 && level_avx2()) out.push_back("avx2");
  out.push_back("portable");
  return out;
}

void set_isa(const std::string& name) {
  auto ok = isa_levels();
  if (std::find(ok.begin(), ok.end(), name) == ok.end()) {
    std::string acc;
    for (auto& s : ok) acc += (acc.empty() ? "" : ", ") + s;
    throw std::invalid_argument("ISA level '" + name + "' is not available on this CPU; available: " + acc);
  }
  std::lock_guard<std::mutex> lock(g_isa_mu);
  g_level = level_for(name);
}

const Level& current_level() {
  std::lock_guard<std::mutex> lock(g_isa_mu);
  if (!g_level) g_level = level_for(isa_levels().front());
  return *g_level;
}

bool cpu_has_avx512_bf16() {
  static const bool has = detect().avx512_bf16;
  return has;
}

}  // namespace nmq
