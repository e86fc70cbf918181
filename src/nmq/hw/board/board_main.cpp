// Verilator main of nmq_board_sim: reset, clock until the self-check has printed its line, report JSON.
//
// The board top holds its whole test (ROMs, sequencer, comparison), so this
// loop only clocks it and listens to the UART pin like a terminal would:
// 8N1 at --divisor clock cycles per bit, sampled mid-bit. It stops at the
// first "\n" after the run finished, or at --max-cycles, and prints the
// debug ports (verdict and counters) beside the decoded text, so the two can
// be checked against each other.
//
// usage: Vboard --divisor 4 --max-cycles 100000
#include "Vboard.h"
#include "verilated.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

[[noreturn]] static void fail(const std::string& msg) {
    std::fprintf(stderr, "board sim: %s\n", msg.c_str());
    std::exit(2);
}

static unsigned long long number(const char* key, const char* text) {
    char* end = nullptr;
    unsigned long long v = std::strtoull(text, &end, 10);
    if (!*text || *end != '\0' || v == 0) fail(std::string("--") + key + " expects a positive integer, got '" + text + "'");
    return v;
}

static std::string json_string(const std::string& s) {
    std::string out = "\"";
    for (unsigned char c : s) {
        if (c == '"' || c == '\\') { out += '\\'; out += (char)c; }
        else if (c >= 0x20 && c < 0x7f) out += (char)c;
        else { char buf[8]; std::snprintf(buf, sizeof buf, "\\u%04x", c); out += buf; }
    }
    return out + "\"";
}

int main(int argc, char** argv) {
    unsigned long long divisor = 0, max_cycles = 0;
    for (int i = 1; i < argc; i += 2) {
        std::string key = argv[i];
        if (i + 1 >= argc) fail(key + " has no value");
        if (key == "--divisor") divisor = number("divisor", argv[i + 1]);
        else if (key == "--max-cycles") max_cycles = number("max-cycles", argv[i + 1]);
        else fail("unknown parameter " + key + "; accepted --divisor, --max-cycles");
    }
    if (!divisor || !max_cycles) fail("--divisor and --max-cycles are both required");

    VerilatedContext* ctx = new VerilatedContext;
    Vboard* top = new Vboard{ctx};
    auto t0 = std::chrono::steady_clock::now();
    top->clk = 0; top->rst = 1;
    for (int i = 0; i < 4; i++) { top->clk = 0; top->eval(); top->clk = 1; top->eval(); }
    top->rst = 0;

    std::string text;
    bool line_done = false, framing_error = false;
    // UART receiver: countdown to the next sample point, bits still to sample (0: idle).
    unsigned long long countdown = 0, finished_at = 0;
    int bits = 0, shift = 0;
    unsigned long long cyc = 0;
    for (; cyc < max_cycles && !line_done; cyc++) {
        top->clk = 0; top->eval();
        top->clk = 1; top->eval();
        int tx = top->tx & 1;
        if (top->finished && !finished_at) finished_at = cyc + 1;
        if (bits == 0) {
            if (!tx) { bits = 9; countdown = divisor + divisor / 2 - 1; shift = 0; }
        } else if (countdown-- == 0) {
            if (bits > 1) { shift |= tx << (9 - bits); countdown = divisor - 1; bits--; }
            else {
                // The stop bit: it must be high, then the line is idle again.
                if (!tx) framing_error = true;
                text += (char)shift;
                bits = 0;
                if (shift == '\n' && top->finished) line_done = true;
            }
        }
    }
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("{\"sim_cycles\": %llu, \"finished_at\": %llu, \"finished\": %d, \"passed\": %d, "
                "\"mismatches\": %u, \"beats\": %u, \"cycles\": %llu, \"errors\": %u, \"leds\": %u, "
                "\"line_done\": %d, \"framing_error\": %d, \"uart\": %s, \"sim_seconds\": %.6f}\n",
                cyc, finished_at, (int)top->finished, (int)top->passed, (unsigned)top->mismatches,
                (unsigned)top->beats, (unsigned long long)top->cycles, (unsigned)top->errors,
                (unsigned)top->leds, (int)line_done, (int)framing_error, json_string(text).c_str(), secs);
    top->final();
    delete top;
    delete ctx;
    return 0;
}
