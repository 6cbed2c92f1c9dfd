# Everything a new user needs: `make demo` and `make test` create .venv and install on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: test test-fast demo lint typecheck protos bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU torch pin first: a looser requirement would pull gigabytes of CUDA packages.
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

# The same without the tests marked slow (child processes, ONNX, browser, end-to-end runs, fuzzing).
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

demo: $(STAMP)
	$(VENV)/bin/raredet demo $(DEMO_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy src/raredet

# Regenerate the committed *_pb2.py / *_pb2.pyi from src/raredet/protos/*.proto.
protos: $(STAMP)
	$(PY) -m raredet.protos.generate

bench: $(STAMP)
	$(PY) -m bench.run_all

clean:
	rm -rf $(VENV) build dist src/*.egg-info
