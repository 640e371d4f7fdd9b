# Two commands do all the set-up: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROTO_SRC := proto/shared/wire/v1/federation.proto

.PHONY: demo test proto lint venv clean study

venv: $(STAMP)

# torch first, from the pinned CPU build: anything that depends on torch would otherwise pull a CUDA build.
# Every extra: the demo and the tests run every role (docs/deploy.md installs one role per host).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[silo,coordinator,judge,bench,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m bench.demo --workdir .demo

test: $(STAMP)
	$(PY) -m pytest -q

# The demo-scale study of docs/results.md in the paper's setting (10 clients, 2 per round,
# 20 rounds; about an hour on 2 shared cores); each grid resumes where it stopped. Trimmed to
# fit: Hateful-Memes levels other than each scenario's middle one run seed 0 only.
# Each grid's results.jsonl and partition summaries are then copied to docs/study/ with its
# tables (mean ± std and per seed), per-round plots and the paired significance of every
# comparison.
STUDY_GRIDS := study study-crisismmd study-medical ablation
STUDY_OUT := main:hateful_memes crisismmd:crisismmd medical:medical ablation:ablation
study: $(STAMP)
	for grid in $(STUDY_GRIDS); do $(PY) -m bench.runner --config bench/$$grid.yaml || exit 1; done
	rm -rf docs/study/plots docs/study/partitions && mkdir -p docs/study
	for pair in $(STUDY_OUT); do out=$${pair%%:*}; name=$${pair##*:}; \
	  cp .study/$$out/results.jsonl docs/study/$$name.jsonl && \
	  mkdir -p docs/study/partitions/$$name && \
	  for part in .study/$$out/partitions/*/; do \
	    cp $$part/partition.json docs/study/partitions/$$name/$$(basename $$part).json; done && \
	  $(PY) -m bench.report docs/study/$$name.jsonl --out docs/study/$$name.md \
	    --plots docs/study/plots/$$name || exit 1; done
	$(PY) -m bench.significance $(foreach p,$(STUDY_OUT),docs/study/$(lastword $(subst :, ,$(p))).jsonl) \
	  --out docs/study/significance.md

proto: $(STAMP)
	$(PY) -m grpc_tools.protoc -Iproto --python_out=. --pyi_out=. --grpc_python_out=. $(PROTO_SRC)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

clean:
	rm -rf .demo .study build *.egg-info
