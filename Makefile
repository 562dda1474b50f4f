# Quick start: `make demo` sets up and runs the demo; `make test` sets up and runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Python writes its bytecode caches even where the environment says not to: the suite starts dozens
# of Python processes (torchrun ranks, command-line runs, pytest within pytest) that would otherwise
# each compile sdeplug and rewrite the tests' asserts again.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: demo test test-fast test-portable lint setup clean bench train-2proc docs

setup: $(STAMP)

# constraints.txt pins torch to the CPU wheel on the development machines' disk.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/sdeplug plugins
	$(BIN)/sdeplug sample examples/ring8_pc.toml --no-progress
	$(BIN)/sdeplug sample examples/ring8_ode.toml --no-progress
	$(BIN)/sdeplug sample examples/ring8_torchsde.toml --no-progress
	$(BIN)/sdeplug likelihood examples/ring8_likelihood.toml
	$(BIN)/sdeplug train examples/moons.toml --no-progress
	$(BIN)/sdeplug sample examples/moons.toml --no-progress
	$(BIN)/sdeplug sample examples/moons.toml --sampler examples/samplers/dopri5.toml --out demo-output/moons/ode --no-progress
	$(BIN)/sdeplug train examples/digits.toml --no-progress
	$(BIN)/sdeplug sample examples/digits.toml --no-progress
	$(BIN)/sdeplug sample examples/digits.toml --sampler examples/samplers/pc.toml --out demo-output/digits/pc --no-progress
	$(BIN)/sdeplug likelihood examples/digits.toml
	$(BIN)/sdeplug train examples/digits.toml --classifier --no-progress
	$(BIN)/sdeplug sample examples/digits.toml --guidance examples/guidance/digits_classes.toml --sampler examples/guidance/unipc20.toml --out demo-output/digits/guided --no-progress
	$(BIN)/sdeplug sample examples/digits.toml --guidance examples/guidance/digits_inpaint.toml --sampler examples/samplers/pc.toml --num 120 --out demo-output/digits/inpaint --no-progress
	$(BIN)/sdeplug train examples/digits_conditional.toml --no-progress
	$(BIN)/sdeplug sample examples/digits_conditional.toml --guidance examples/guidance/digits_cfg.toml --no-progress
	$(BIN)/sdeplug evaluate examples/digits_conditional.toml --sweep examples/sweeps/guidance_weights.toml --no-progress
	$(BIN)/sdeplug train examples/digits_ncsnpp.toml --no-progress
	$(BIN)/sdeplug sample examples/digits_ncsnpp.toml --sampler examples/samplers/unipc10.toml --no-progress
	$(BIN)/sdeplug likelihood examples/digits_ncsnpp.toml
	@echo "plots, samples, checkpoints and reports are in demo-output/"

# Training with DDP in 2 processes on this machine (gloo on CPU, one thread each), launched by torchrun.
train-2proc: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/torchrun --standalone --nproc_per_node 2 $(BIN)/sdeplug train examples/moons.toml \
		--out demo-output/moons-2proc --no-progress

# The CI command: lint, then the whole suite on every core.
test: lint
	$(BIN)/python -m pytest -n auto --dist loadgroup --durations=10

# The tests whose numbers depend on the CPU's kernels (networks against recorded references,
# closed forms, metrics), again on torch's portable kernels (ATEN_CPU_CAPABILITY=default): what
# another CPU computes. Their tolerances come from error models, so both runs must pass.
PORTABLE_TESTS := tests/test_ncsnpp.py tests/test_metrics.py tests/test_denoisers.py tests/test_diffusers.py \
	tests/test_oracle.py tests/test_sdes.py tests/test_fast_samplers.py tests/test_gaussian_start.py \
	tests/test_likelihood.py tests/test_adaptive_solvers.py tests/test_inception.py tests/test_convert.py \
	tests/test_diffusers_pipelines.py tests/test_stats.py
test-portable: $(STAMP)
	ATEN_CPU_CAPABILITY=default $(BIN)/python -m pytest -n auto --dist loadgroup -q $(PORTABLE_TESTS)

# The edit-test loop: every module, tests marked slow left out.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -n auto --dist loadgroup -m "not slow" -q

# The documentation site, built strictly into site/ (a broken link or a missing API name fails).
docs: $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[docs]"
	NO_MKDOCS_2_WARNING=1 DISABLE_MKDOCS_2_WARNING=true $(BIN)/mkdocs build --strict

lint: $(STAMP)
	$(BIN)/ruff check --no-cache .
	$(BIN)/ruff format --no-cache --check .

# Benchmarks measure, they never run in the test suite; results go to docs/benchmarks.md.
# SCORE_SDE=path/to/score_sde_pytorch adds the paper's own NCSN++ to benchmarks/networks.py.
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[bench]"
	$(BIN)/python benchmarks/likelihood.py --write docs/benchmarks.md
	$(BIN)/python benchmarks/training.py --write docs/benchmarks.md
	$(BIN)/python benchmarks/sampling.py --write docs/benchmarks.md
	$(BIN)/python benchmarks/fewstep.py --n 4000 --seeds 3 --mixtures 2 --write docs/benchmarks.md
	$(BIN)/python benchmarks/compile_sampling.py --write docs/benchmarks.md
	$(BIN)/python benchmarks/contract_kit.py --write docs/benchmarks.md
	$(BIN)/python benchmarks/kit_planted_bugs.py --write docs/benchmarks.md
	$(BIN)/python benchmarks/distributed.py --write docs/benchmarks.md
	$(BIN)/python benchmarks/networks.py $(if $(SCORE_SDE),--reference $(SCORE_SDE)) --write docs/benchmarks.md
	$(BIN)/python benchmarks/quality.py --write docs/benchmarks.md
	$(BIN)/python benchmarks/data.py --write docs/benchmarks.md
	$(BIN)/python benchmarks/guidance.py --write docs/benchmarks.md
	$(BIN)/python benchmarks/guidance_digits.py --write docs/benchmarks.md

clean:
	rm -rf $(VENV) demo-output sdeplug-output site .pytest_cache .hypothesis
