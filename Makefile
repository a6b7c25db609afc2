# The two commands of the README:
#   make run            set up .venv if needed, then run the notebook chain (PROFILE=default)
#   make test           set up, unit tests, the chain on the `ci` profile, then the default chain
#                       into runs/check and its results checked against tests/result_checks.toml
# Others:
#   make setup          only create/refresh .venv (pinned by constraints.txt)
#   make study          the decisive test (notebook 04, ~50 min on 2 cores; resumes)
#   make run PROFILE=full ARGS="--force"     any profile, any chain option (see --help)
#   make bench          the benchmarks
#   make gpu-check      the GPU check: runs/gpu-check/gpu_check.{json,md} (tiny on the CPU without CUDA)
#   make clean-runs     delete runs/ (checkpoints, brackets, executed notebooks)
#   make publish-links REPO=owner/name   the repository's GitHub address into every Colab/Binder/pip link

SHELL := /bin/bash
PROFILE ?= default
ARGS ?=
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
# Set-up runs again only when what it installs changes (content, not timestamps: a fresh
# clone has new timestamps but needs no new install).
STAMP := $(VENV)/.setup-stamp
SETUP_KEY = $(shell cat pyproject.toml constraints.txt | $(PYTHON) -c "import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest()[:16])")
CHECK_RUN := runs/check
# nbval's copies: notebook 00 (the lesson, checked against its committed outputs) and the ci profile's notebooks
NBVAL_DIR := runs/nbval

.PHONY: setup run test study bench gpu-check clean-runs publish-links

setup:
	@key="$(SETUP_KEY)"; \
	if [ -x $(PY) ] && [ "$$(cat $(STAMP) 2>/dev/null)" = "$$key" ]; then \
		echo "Environment $(VENV) is up to date."; \
	else \
		if [ ! -x $(PY) ]; then \
			[ -n "$(PYTHON)" ] || { echo "Need python3.11 (or python3) on PATH." >&2; exit 1; }; \
			echo "Creating $(VENV) with $(PYTHON) ($$($(PYTHON) --version))"; \
			$(PYTHON) -m venv $(VENV) || exit 1; \
		fi; \
		echo "Installing the pinned environment (constraints.txt); the first time downloads ~5 GB (torch)."; \
		$(PY) -m pip install --disable-pip-version-check -c constraints.txt -e ".[test]" || exit 1; \
		echo "$$key" > $(STAMP); \
	fi

run: setup
	$(PY) -m lie_helpers.chain --profile $(PROFILE) $(ARGS)

# pytest exits 5 when it collects nothing; that is not a failure. nbval then checks notebook 00 (the lesson,
# float64 toy problems) against its committed outputs, with tests/nbval_sanitize.cfg for what varies between
# machines (round-off, timings), and runs every notebook of the ci profile top to bottom in a fresh kernel (lax:
# no output compared). The default chain runs into its own folder (runs/check, resumed when up to date), so
# `make test` never touches runs/default; its results are then compared with tests/result_checks.toml at
# measured tolerances.
test: setup
	$(PY) -m pytest tests/ || [ $$? -eq 5 ]
	$(PY) -m lie_helpers.chain --profile ci --no-progress-bar
	rm -rf $(NBVAL_DIR) && mkdir -p $(NBVAL_DIR)/lesson && cp notebooks/00_theory.ipynb $(NBVAL_DIR)/lesson/
	$(PY) -m pytest -p no:cacheprovider --nbval $(NBVAL_DIR)/lesson --nbval-sanitize-with tests/nbval_sanitize.cfg
	$(PY) -m lie_helpers.pipeline.nbval_copies --profile ci $(NBVAL_DIR)/ci
	$(PY) -m pytest -p no:cacheprovider --nbval-lax $(NBVAL_DIR)/ci
	$(PY) -m lie_helpers.chain --profile default --run-dir $(CHECK_RUN) --no-progress-bar
	$(PY) -m lie_helpers.training.results $(CHECK_RUN)

# The decisive test (notebook 04, profile `study`): two processes share the runs on two cores (each
# resumes, so an interrupted study continues), then the chain executes notebook 04 over the finished runs
# and its results are checked. JOBS=1 for one process. STUDY_PROFILE=ci runs the same on 14 tiny runs (minutes;
# its results are not the study's, so tests/study_checks.toml is not applied).
JOBS ?= 2
STUDY_PROFILE ?= study
study: setup
	@pids=""; for k in $$(seq 0 $$(($(JOBS) - 1))); do \
		OMP_NUM_THREADS=1 $(PY) -m lie_helpers.study --profile $(STUDY_PROFILE) --shard $$k/$(JOBS) & pids="$$pids $$!"; \
	done; status=0; for p in $$pids; do wait $$p || status=1; done; exit $$status
	$(PY) -m lie_helpers.chain --profile $(STUDY_PROFILE) --only 04 $(ARGS)
	@if [ "$(STUDY_PROFILE)" = study ]; then $(PY) -m lie_helpers.training.results runs/study --checks tests/study_checks.toml; fi

bench: setup
	$(PY) benchmarks/bench_brackets.py
	$(PY) benchmarks/train_throughput.py

gpu-check: setup
	$(PY) -m lie_helpers.pipeline.gpu_check --out runs/gpu-check

clean-runs:
	rm -rf runs/

# Standard library only (run as a script, not -m): needs no .venv. REPO reaches the script through the
# environment, unexpanded ($(value ...)) and quoted, so no character of it is ever read by make or the shell as code;
# publish.py then accepts only GitHub's owner/name grammar.
# (unexport: make would otherwise expand the command line's REPO to put it into every recipe's environment.)
unexport REPO
publish-links: export PUBLISH_LINKS_REPO := $(value REPO)
publish-links:
	@[ -n "$$PUBLISH_LINKS_REPO" ] || { echo "Give the repository's GitHub address: make publish-links REPO=owner/name" >&2; exit 2; }
	@$(PYTHON) lie_helpers/pipeline/publish.py "$$PUBLISH_LINKS_REPO"
