# Set-up and everyday commands. `make demo` and `make test` install first when needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
export HF_HUB_OFFLINE ?= 1
export PYTHONUNBUFFERED := 1
# pytest-xdist workers: one per usable core, at most 4 (each holds ~1.7 GB of imported libraries).
WORKERS ?= $(shell $(PYTHON) -c "import os; print(min(4, len(os.sched_getaffinity(0))))")

.PHONY: install demo test test-fast test-references gpu-check gpu-bench references bench lint clean

# Re-runs only when the dependency files change (the stamp is newer otherwise).
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[all,dev]'
	@touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/python -m shared.demo

test: install
	$(BIN)/python -m pytest -n $(WORKERS)

# Everything but the subprocess, torchrun and training tests: under 2 minutes on 2 cores.
# Both run one pytest-xdist worker per core (WORKERS=1 runs them in one process).
test-fast: install
	$(BIN)/python -m pytest -m "not slow" -n $(WORKERS)

# Retrain the four reference models marked `rebuild` (minutes each) in a temporary folder
# and compare their bytes with the shipped files; `make references` rewrites them all.
test-references: install
	TOOLKIT_REBUILD=1 $(BIN)/python -m pytest -m "rebuild" -v

references: install
	$(BIN)/python -m shared.references --rebuild

# On a GPU machine: the CUDA tests (AMP step, NCCL, synchronised timing) and one short job
# per tool on the GPU. Fails, instead of skipping, where no CUDA device is present.
gpu-check: install
	@$(BIN)/python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu-check: no CUDA device on this machine')"
	$(BIN)/python -m pytest -m gpu -v -rs tests/gpu

# The GPU speed runs (a clean tree; results under benchmarks/results/tomerge/): every DiT
# family's blocks at their real size (Wan: 21 latent frames), the whole models at full depth,
# and the SD 1.5 UNet step against tomesd; bf16/fp16, SDPA/flash, interleaved rounds. Then
# VBP on the 16 M language models (results under benchmarks/results/vbp/).
gpu-bench: gpu-check
	$(BIN)/python -m benchmarks.tomerge_dit_speed --device cuda --dtype bf16 --frames 21 \
		--repeats 10 --name dit_speed-cuda
	$(BIN)/python -m benchmarks.tomerge_dit_step --device cuda --ratios 0.3 0.5 0.7
	$(BIN)/python -m benchmarks.tomerge_dit_step --device cuda --families flux wan --ratios 0.5 \
		--methods importance bound --compile
	$(BIN)/python -m benchmarks.tomerge_speed --device cuda --dtype fp16 --attention sdpa \
		--bound --ratios 0.5 0.7 --repeats 10
	$(BIN)/python -m benchmarks.vbp_llm --preset llama-16m --device cuda --select-on-val --threads 8
	$(BIN)/python -m benchmarks.vbp_llm --preset gpt2-16m --device cuda --select-on-val --threads 8

bench: install
	$(BIN)/python -m benchmarks.run_all

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
