"""The C++ Verilator harness of ``nmq_accel``, written next to each build by the driver.

Kept as a string so it ships inside the Python package with no package-data
configuration.
"""

HARNESS_CPP = r"""// Verilator harness for nmq_accel: streams beats from memory, collects results.
//
// The host (nmq.hw.sim.driver) writes each stream as raw little-endian 32-bit
// words, one fixed-size record per beat, in exactly the port layout, so
// this loop only copies words: no per-cycle work in Python.
//
// usage: harness W Z A R n m windows groups row_tiles pass_windows w_words z_words a_words r_words max_cycles
#include "Vnmq.h"
#include "verilated.h"

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

static std::vector<uint32_t> read_words(const char* path) {
    std::vector<uint32_t> v;
    FILE* f = std::fopen(path, "rb");
    if (!f) { std::fprintf(stderr, "harness: cannot open %s\n", path); std::exit(2); }
    std::fseek(f, 0, SEEK_END);
    long n = std::ftell(f);
    std::fseek(f, 0, SEEK_SET);
    v.resize(n / 4);
    if (n && std::fread(v.data(), 4, v.size(), f) != v.size()) { std::fprintf(stderr, "harness: short read %s\n", path); std::exit(2); }
    std::fclose(f);
    return v;
}

// Ports narrower than 65 bits are plain integers in Verilator, wider ones VlWide.
static inline void put(CData& p, const uint32_t* w) { p = (CData)w[0]; }
static inline void put(SData& p, const uint32_t* w) { p = (SData)w[0]; }
static inline void put(IData& p, const uint32_t* w) { p = w[0]; }
static inline void put(QData& p, const uint32_t* w) { p = (QData)w[0] | ((QData)w[1] << 32); }
template <std::size_t N> static inline void put(VlWide<N>& p, const uint32_t* w) { for (std::size_t i = 0; i < N; i++) p[i] = w[i]; }
static inline void get(const IData& p, uint32_t* w) { w[0] = p; }
static inline void get(const QData& p, uint32_t* w) { w[0] = (uint32_t)p; w[1] = (uint32_t)(p >> 32); }
template <std::size_t N> static inline void get(const VlWide<N>& p, uint32_t* w) { for (std::size_t i = 0; i < N; i++) w[i] = p[i]; }

int main(int argc, char** argv) {
    if (argc != 16) { std::fprintf(stderr, "harness: expected 15 arguments, got %d\n", argc - 1); return 2; }
    std::vector<uint32_t> W = read_words(argv[1]), Z = read_words(argv[2]), A = read_words(argv[3]);
    const char* rpath = argv[4];
    unsigned n = std::atoi(argv[5]), m = std::atoi(argv[6]);
    unsigned long windows = std::strtoul(argv[7], 0, 10), groups = std::strtoul(argv[8], 0, 10);
    unsigned long row_tiles = std::strtoul(argv[9], 0, 10), pass_windows = std::strtoul(argv[10], 0, 10);
    size_t ww = std::atoi(argv[11]), zw = std::atoi(argv[12]), aw = std::atoi(argv[13]), rw = std::atoi(argv[14]);
    unsigned long long max_cycles = std::strtoull(argv[15], 0, 10);
    size_t nw = W.size() / ww, nz = Z.size() / zw, na = A.size() / aw;
    // Pad one zero beat at the end so put() may always read a full record.
    W.resize(W.size() + ww + 2); Z.resize(Z.size() + zw + 2); A.resize(A.size() + aw + 2);
    std::vector<uint32_t> R;
    R.reserve((size_t)groups * rw);
    std::vector<uint32_t> beat(rw + 2);

    VerilatedContext* ctx = new VerilatedContext;
    Vnmq* top = new Vnmq{ctx};
    auto t0 = std::chrono::steady_clock::now();
    top->clk = 0; top->rst = 1; top->start = 0; top->r_ready = 1;
    top->w_valid = top->z_valid = top->a_valid = 0;
    for (int i = 0; i < 4; i++) { top->clk = 0; top->eval(); top->clk = 1; top->eval(); }
    top->rst = 0;
    top->cfg_n = n; top->cfg_m = m; top->cfg_windows = windows; top->cfg_groups = groups;
    top->cfg_row_tiles = row_tiles; top->cfg_pass_windows = pass_windows;
    top->start = 1;
    top->clk = 0; top->eval(); top->clk = 1; top->eval();
    top->start = 0;

    size_t wi = 0, zi = 0, ai = 0;
    unsigned long long cyc = 0;
    while (!top->done && cyc < max_cycles) {
        top->w_valid = wi < nw; put(top->w_data, &W[wi * ww]);
        top->z_valid = zi < nz; put(top->z_data, &Z[zi * zw]);
        top->a_valid = ai < na; put(top->a_data, &A[ai * aw]);
        top->clk = 0; top->eval();
        bool wf = top->w_valid && top->w_ready, zf = top->z_valid && top->z_ready, af = top->a_valid && top->a_ready;
        if (top->r_valid) { get(top->r_data, beat.data()); R.insert(R.end(), beat.begin(), beat.begin() + rw); }
        top->clk = 1; top->eval();
        wi += wf; zi += zf; ai += af; cyc++;
    }
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    FILE* f = std::fopen(rpath, "wb");
    if (!f || (R.size() && std::fwrite(R.data(), 4, R.size(), f) != R.size())) { std::fprintf(stderr, "harness: cannot write %s\n", rpath); return 2; }
    std::fclose(f);
    std::printf("{\"cycles\": %llu, \"harness_cycles\": %llu, \"done\": %d, \"error\": %d, "
                "\"consumed\": [%zu, %zu, %zu], \"offered\": [%zu, %zu, %zu], \"result_beats\": %zu, \"sim_seconds\": %.6f}\n",
                (unsigned long long)top->cycles, cyc, (int)top->done, (int)top->error,
                wi, zi, ai, nw, nz, na, R.size() / rw, secs);
    top->final();
    delete top;
    delete ctx;
    return 0;
}
"""
