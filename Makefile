# make demo: the main job on the embedded default; make test: everything CI runs.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck unit integration system-deps bench clean slurm-start slurm-stop

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

demo: $(STAMP)
	$(BIN)/python -m dlhub_hpc.demo

system-deps:
	@bash scripts/install-system-deps.sh

lint: $(STAMP)
	$(BIN)/ruff check dlhub_hpc tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit

# Starts a one-node Slurm first when it is installed and we are root (the `slurm` tests
# need it), and stops it afterwards, pass or fail. Under CI=true no Slurm is a failure;
# elsewhere the slurm tests skip and say why.
integration: $(STAMP)
	@slurm=0; \
	if [ "$$(id -u)" -eq 0 ] && [ -x /usr/sbin/slurmctld ] && command -v sbatch >/dev/null; then \
	  if conf="$$(bash scripts/slurm/start.sh)"; then eval "$$conf"; slurm=1; \
	  else echo "could not start Slurm (scripts/slurm/start.sh, its log above)" >&2; fi; \
	else echo "no Slurm: it needs root and slurm-wlm munge installed (make system-deps)" >&2; \
	fi; \
	if [ $$slurm -eq 0 ] && [ "$${CI:-}" = true ]; then \
	  echo "CI=true: the slurm tests must run; install slurm-wlm munge (make system-deps," \
	       "as root) and run as root so scripts/slurm/start.sh can start Slurm" >&2; \
	  exit 1; \
	fi; \
	rc=0; $(BIN)/python -m pytest tests/integration --durations=15 || rc=$$?; \
	if [ $$slurm -eq 1 ]; then bash scripts/slurm/stop.sh; fi; \
	exit $$rc

slurm-start:
	@bash scripts/slurm/start.sh

slurm-stop:
	@bash scripts/slurm/stop.sh

test: system-deps $(STAMP) lint typecheck unit integration

bench: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[bench]'
	$(BIN)/python benchmarks/latency.py --plot benchmarks/results/latency.png
	$(BIN)/python benchmarks/scaling.py --counts 1,8,64,1024 --passes 1 --plot benchmarks/results/scaling.png
	$(BIN)/python benchmarks/paper_suite.py --quick
	$(BIN)/python benchmarks/cold_start.py
	@if conf="$$(bash scripts/slurm/start.sh)"; then eval "$$conf"; \
	  $(BIN)/python benchmarks/pilot.py --json benchmarks/results/pilot.json; \
	else echo "no Slurm here: skipping benchmarks/pilot.py" >&2; fi

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
