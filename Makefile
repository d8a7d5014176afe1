# make demo: the main job on the embedded default; make test: everything CI runs.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck unit integration system-deps bench pytriton-env clean slurm-start slurm-stop

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

# PyTriton 0.7 (benchmarks/pytriton_peer.py's peer) needs numpy < 2, so it gets an
# environment of its own, from the system's Python: Triton's Python stub links the
# system's libpython, so the standard library must be that Python's too.
PYTRITON_ENV = .venv-pytriton-bench
$(PYTRITON_ENV)/bin/python:
	/usr/bin/python3 -m venv $(PYTRITON_ENV)
	$(PYTRITON_ENV)/bin/pip install -q -r benchmarks/requirements-pytriton.txt

pytriton-env: $(PYTRITON_ENV)/bin/python

# Every script runs (a '-' line goes on past its own missed target) and writes its JSON in
# benchmarks/results/; summary.py then writes summary.md and summary.png from this run's
# files and exits 1 on any missed target. About 12 minutes on 2 cores.
bench: $(STAMP) pytriton-env
	$(BIN)/python -m pip install -q -e '.[bench]'
	rm -f benchmarks/results/*.json
	-$(BIN)/python benchmarks/latency.py --requests 1000 --sizes 8,65536 --plot benchmarks/results/latency.png
	-$(BIN)/python benchmarks/throughput.py
	-$(BIN)/python benchmarks/scaling.py --counts 1,8,64,1024 --passes 1 --plot benchmarks/results/scaling.png
	-$(BIN)/python benchmarks/paper_suite.py --quick --only noop --only oqmd_rf --only htex
	-$(BIN)/python benchmarks/pytriton_peer.py
	-$(BIN)/python benchmarks/cold_start.py --rounds 3
	-@if conf="$$(bash scripts/slurm/start.sh)"; then eval "$$conf"; \
	  $(BIN)/python benchmarks/pilot.py --json benchmarks/results/pilot.json; \
	else echo "no Slurm here: skipping benchmarks/pilot.py" >&2; fi
	$(BIN)/python benchmarks/summary.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
