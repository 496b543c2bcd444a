# rmmd_core: `make demo` and `make test` each set up everything they need on a fresh machine.
#   venv (.venv) -> torch (TORCH_SPEC, skipped when the venv already imports torch) -> deps -> C++ build
PYTHON     ?= python3
VENV       ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY         := $(VENV)/bin/python
PIP        := $(PY) -m pip
STAMPS     := .stamps
DEPS       := triton numpy pytest pytest-timeout ninja pybind11 hypothesis diffusers scipy tqdm matplotlib
EXT_SRCS   := setup.py $(shell find csrc -type f 2>/dev/null)

.PHONY: demo pareto test bench bench-memory bench-step bench-step-peer setup clean

# each run writes a new timestamped report folder (the CLI never overwrites one without --overwrite)
DEMO_OUT  ?= demo_reports/$(shell date +%Y%m%d-%H%M%S)
DEMO_ARGS ?=

demo: setup
	$(PY) -m rmmd_core demo --out $(DEMO_OUT) $(DEMO_ARGS)

# the full lambda sweep of every method (slower than the demo); results go to benchmarks/results/
pareto: setup
	$(PY) -m rmmd_core pareto $(DEMO_ARGS)

test: setup
	$(PY) -m pytest -q -p no:cacheprovider tests

# every fused op (JSON + PNG under benchmarks/results/), then the CRPS ops, the reward / EMA ops and the
# gradient norm / clip ops and the fused optimiser update
bench: setup
	$(PY) benchmarks/bench_ops.py
	$(PY) benchmarks/bench_crps.py
	$(PY) benchmarks/bench_rewards_ema.py
	$(PY) benchmarks/bench_grad_norm.py
	$(PY) benchmarks/bench_adam.py

bench-memory: setup
	$(PY) benchmarks/bench_memory.py

# step time vs its floor (same network calls, trivial loss) and vs the peer's DMD2 step when installed
BENCH_STEP_ARGS ?=
bench-step: setup
	$(PY) benchmarks/bench_step.py --json benchmarks/results/step-$(shell date +%Y-%m-%d)-$(shell $(PY) -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')").json $(BENCH_STEP_ARGS)

# the optional peer (nvidia-modelopt, pinned next to torch so pip keeps our torch build)
bench-step-peer: setup
	$(PIP) install -q "nvidia-modelopt==0.47.0" "$(TORCH_SPEC)"
	$(MAKE) bench-step

setup: $(STAMPS)/build

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# torch first and pinned: an unpinned torch (or a dependency's range) would pull a CUDA build
$(STAMPS)/torch: | $(PY)
	@mkdir -p $(STAMPS)
	@$(PY) -c "import torch" 2>/dev/null && echo "torch already installed: $$($(PY) -c 'import torch; print(torch.__version__)')" \
		|| $(PIP) install -q "$(TORCH_SPEC)"
	@touch $@

$(STAMPS)/deps: $(STAMPS)/torch Makefile
	$(PIP) install -q $(DEPS)
	@$(PY) -c "import torch; print('torch', torch.__version__)"
	@touch $@

# --no-build-isolation: build against the torch installed above, never a second one
$(STAMPS)/build: $(STAMPS)/deps $(EXT_SRCS)
	$(PIP) install -q --no-build-isolation --no-deps -e .
	@touch $@

clean:
	rm -rf build $(STAMPS) rmmd_core/*.so *.egg-info
