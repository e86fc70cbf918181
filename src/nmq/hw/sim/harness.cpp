// Verilator harness of nmq_accel: streams beats from word files, collects the results.
//
// The host (nmq.hw.sim.harness) writes each stream as raw little-endian 32-bit
// words, one fixed-size record per beat, in exactly the port layout, so this
// loop only copies words: no per-cycle work in Python. The runtime registers
// arrive the same way, as one record of the ctl_regs struct, so the harness
// does not depend on the struct's fields.
//
// usage: Vnmq --weights W.bin --weight-words 2 --zeros Z.bin --zero-words 1
//             --acts A.bin --act-words 8 --regs REGS.bin
//             --results R.bin --result-words 4 --max-cycles 100000
// Every parameter is required, in any order; a missing, unknown or malformed
// one ends the run with status 2 and a message on stderr.
#include "Vnmq.h"
#include "verilated.h"

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

static const char* const PARAMS[] = {"weights", "weight-words", "zeros", "zero-words", "acts", "act-words",
                                     "regs", "results", "result-words", "max-cycles"};

[[noreturn]] static void fail(const std::string& msg) {
    std::fprintf(stderr, "harness: %s\n", msg.c_str());
    std::exit(2);
}

static std::string accepted() {
    std::string s;
    for (const char* p : PARAMS) s += std::string(s.empty() ? "--" : ", --") + p;
    return s;
}

static std::map<std::string, std::string> parse(int argc, char** argv) {
    std::map<std::string, std::string> args;
    for (int i = 1; i < argc; i += 2) {
        std::string key = argv[i];
        if (key.compare(0, 2, "--") != 0) fail("expected --name value, got '" + key + "'");
        key = key.substr(2);
        bool known = false;
        for (const char* p : PARAMS) known = known || key == p;
        if (!known) fail("unknown parameter --" + key + "; accepted " + accepted());
        if (i + 1 >= argc) fail("--" + key + " has no value");
        if (args.count(key)) fail("--" + key + " given twice");
        args[key] = argv[i + 1];
    }
    for (const char* p : PARAMS)
        if (!args.count(p)) fail(std::string("missing --") + p + "; every one of " + accepted() + " is required");
    return args;
}

static unsigned long long number(const std::map<std::string, std::string>& args, const char* key) {
    const std::string& text = args.at(key);
    char* end = nullptr;
    unsigned long long v = std::strtoull(text.c_str(), &end, 10);
    if (text.empty() || *end != '\0' || v == 0) fail(std::string("--") + key + " expects a positive integer, got '" + text + "'");
    return v;
}

static std::vector<uint32_t> read_words(const std::string& path) {
    std::vector<uint32_t> v;
    FILE* f = std::fopen(path.c_str(), "rb");
    if (!f) fail("cannot open " + path);
    std::fseek(f, 0, SEEK_END);
    long n = std::ftell(f);
    std::fseek(f, 0, SEEK_SET);
    v.resize(n / 4);
    if (n && std::fread(v.data(), 4, v.size(), f) != v.size()) fail("short read " + path);
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
    const std::map<std::string, std::string> args = parse(argc, argv);
    std::vector<uint32_t> W = read_words(args.at("weights")), Z = read_words(args.at("zeros")),
                          A = read_words(args.at("acts")), REGS = read_words(args.at("regs"));
    const std::string& rpath = args.at("results");
    size_t ww = number(args, "weight-words"), zw = number(args, "zero-words"), aw = number(args, "act-words"),
           rw = number(args, "result-words");
    unsigned long long max_cycles = number(args, "max-cycles");
    size_t nw = W.size() / ww, nz = Z.size() / zw, na = A.size() / aw;
    if (REGS.empty()) fail("--regs " + args.at("regs") + " holds no register words");
    // Pad one zero beat at the end so put() may always read a full record.
    W.resize(W.size() + ww + 2); Z.resize(Z.size() + zw + 2); A.resize(A.size() + aw + 2);
    std::vector<uint32_t> R;
    std::vector<uint32_t> beat(rw + 2);

    VerilatedContext* ctx = new VerilatedContext;
    Vnmq* top = new Vnmq{ctx};
    REGS.resize(REGS.size() + sizeof(top->ctl_regs) / 4 + 2);
    auto t0 = std::chrono::steady_clock::now();
    top->clk = 0; top->rst = 1; top->ctl_start = 0; top->r_ready = 1;
    top->w_valid = top->z_valid = top->a_valid = 0;
    for (int i = 0; i < 4; i++) { top->clk = 0; top->eval(); top->clk = 1; top->eval(); }
    top->rst = 0;
    put(top->ctl_regs, REGS.data());
    top->ctl_start = 1;
    top->clk = 0; top->eval(); top->clk = 1; top->eval();
    top->ctl_start = 0;

    size_t wi = 0, zi = 0, ai = 0;
    unsigned long long cyc = 0;
    while (!top->ctl_done && cyc < max_cycles) {
        top->w_valid = wi < nw; put(top->w_payload, &W[wi * ww]);
        top->z_valid = zi < nz; put(top->z_payload, &Z[zi * zw]);
        top->a_valid = ai < na; put(top->a_payload, &A[ai * aw]);
        top->clk = 0; top->eval();
        bool wf = top->w_valid && top->w_ready, zf = top->z_valid && top->z_ready, af = top->a_valid && top->a_ready;
        if (top->r_valid) { get(top->r_payload, beat.data()); R.insert(R.end(), beat.begin(), beat.begin() + rw); }
        top->clk = 1; top->eval();
        wi += wf; zi += zf; ai += af; cyc++;
    }
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    FILE* f = std::fopen(rpath.c_str(), "wb");
    if (!f || (R.size() && std::fwrite(R.data(), 4, R.size(), f) != R.size())) fail("cannot write " + rpath);
    std::fclose(f);
    std::printf("{\"cycles\": %llu, \"harness_cycles\": %llu, \"done\": %d, \"error\": %d, "
                "\"consumed\": [%zu, %zu, %zu], \"offered\": [%zu, %zu, %zu], \"result_beats\": %zu, \"sim_seconds\": %.6f}\n",
                (unsigned long long)top->ctl_cycles, cyc, (int)top->ctl_done, (int)top->ctl_error,
                wi, zi, ai, nw, nz, na, R.size() / rw, secs);
    top->final();
    delete top;
    delete ctx;
    return 0;
}
