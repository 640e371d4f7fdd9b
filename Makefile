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

# The demo-scale study of docs/results.md (about 27 minutes on 2 cores); resumes where it stopped.
study: $(STAMP)
	$(PY) -m bench.runner --config bench/study.yaml
	$(PY) -m bench.runner --config bench/ablation.yaml

proto: $(STAMP)
	$(PY) -m grpc_tools.protoc -Iproto --python_out=. --pyi_out=. --grpc_python_out=. $(PROTO_SRC)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

clean:
	rm -rf .demo .study build *.egg-info
