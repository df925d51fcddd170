# Two commands on a fresh machine: `make demo` and `make test`. Each bootstraps .venv from requirements.txt.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements-$(shell cat requirements.txt pyproject.toml | sha1sum | cut -c1-12)

.PHONY: setup data demo test bench gpu-check clean-runs docs

setup: $(STAMP) chromium postgresql slurm

$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "setup: installing requirements into $(VENV) (first time: ~3 minutes)"
	@set -o pipefail; $(PY) -m pip install -q --disable-pip-version-check -r requirements.txt 2>&1 \
	  | { grep -v "is ignored: it is neither a file nor a directory" || true; }
	@echo "setup: installing the genood package (editable) into $(VENV)"
	@$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e . >/dev/null
	@rm -f $(VENV)/.requirements-* && touch $@

# kaleido (plotly PNG export) needs a Chromium, and the report test drives one through chromedriver;
# Debian's chromium and chromium-driver are installed when we can (root, apt).
chromium:
	@{ command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; } && command -v chromedriver >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "setup: installing Debian chromium + chromium-driver (PNG figures, the report test; ~1 minute)"; \
	    (apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium chromium-driver >/dev/null 2>&1)) \
	      || echo "setup: chromium could not be installed; figures will be HTML only and the report test will fail"; \
	  else echo "setup: no chromium and no root apt-get; figures will be HTML only and the report test will fail"; fi; }
.PHONY: chromium

# the PostgreSQL sweep store's tests start a throwaway server from Debian's postgresql package
postgresql:
	@{ ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1; } || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "setup: installing Debian postgresql (the PostgreSQL sweep store's tests; ~1 minute)"; \
	    (apt-get install -y -q postgresql >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q postgresql >/dev/null 2>&1)) \
	      || echo "setup: postgresql could not be installed; the PostgreSQL store tests will fail"; \
	  else echo "setup: no postgresql and no root apt-get; the PostgreSQL store tests will fail"; fi; }
.PHONY: postgresql

# the launcher test starts a real single-node Slurm cluster (Debian's slurm-wlm and munge)
slurm:
	@{ command -v slurmctld >/dev/null 2>&1 && { command -v munged >/dev/null 2>&1 || test -x /usr/sbin/munged; }; } || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "setup: installing Debian slurm-wlm + munge (the Slurm launcher test; ~1 minute)"; \
	    (DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >/dev/null 2>&1)) \
	      || echo "setup: slurm-wlm could not be installed; the Slurm launcher test will fail"; \
	  else echo "setup: no slurm-wlm and no root apt-get; the Slurm launcher test will fail"; fi; }
.PHONY: slurm

data: $(STAMP)
	$(PY) -m genood.data mirror

demo: setup data
	$(PY) demo.py

# the hands-on notebook executed on a real kernel, with its outputs, as one HTML page
docs: setup data
	@mkdir -p docs
	$(PY) -m jupyter nbconvert --to html --execute --ExecutePreprocessor.timeout=1200 \
	  --output-dir docs notebooks/hands_on_guide.ipynb
	@echo "wrote docs/hands_on_guide.html"

test: setup data
	$(VENV)/bin/ruff check -q .
	$(PY) -m pytest -q

# the benchmarks import each other (benchmarks.bench_diffusion's inputs): the checkout is on their path
bench: export PYTHONPATH := $(CURDIR)
bench: setup data
	$(PY) benchmarks/bench_flows.py
	$(PY) benchmarks/bench_sweeps.py
	$(PY) benchmarks/bench_lid.py
	$(PY) benchmarks/bench_diffusion.py
	$(PY) benchmarks/bench_scores.py
	$(PY) benchmarks/bench_families.py
	$(PY) benchmarks/bench_suite.py
	$(PY) benchmarks/bench_seed_experiments.py
	$(PY) benchmarks/bench_faults.py
	$(PY) benchmarks/bench_precision.py

# one GPU, under 8 minutes: every family's paper preset with training.precision auto, LID and FLIPD, two agents
gpu-check: export PYTHONPATH := $(CURDIR)
gpu-check: setup data
	$(PY) benchmarks/gpu_check.py

clean-runs:
	rm -rf runs/demo
