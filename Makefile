# fedkit: `make demo` and `make test` do all the set-up on a fresh clone.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip -q --disable-pip-version-check
# The CPU build of torch goes in first so nothing resolves a multi-GB CUDA build.
TORCH  ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: demo test lint proto bench bench-training bench-codecs bench-grpc bench-split-grpc bench-compression bench-events bench-secagg bench-split bench-flower bench-stragglers bench-async bench-hostile bench-wire bench-execution bench-fedprox bench-split-modes bench-lora clean

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
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/fedkit run scenarios/quickstart.yaml --out runs/quickstart --overwrite

# pytest exits 5 when it collected no test: that is not a failure of the set-up.
test: $(VENV)/.dev
	$(VENV)/bin/pytest $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$rc

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check fedkit tests benchmarks clients server
	$(VENV)/bin/mypy fedkit

proto: $(VENV)/.dev
	$(PY) -m fedkit.transport.protogen

# Each benchmark writes a table to benchmarks/results/.
bench: bench-training bench-codecs bench-grpc bench-split-grpc bench-compression bench-events bench-secagg bench-split bench-flower bench-stragglers bench-async bench-hostile bench-wire bench-execution bench-fedprox bench-split-modes bench-lora

bench-training: $(VENV)/.installed
	$(PY) benchmarks/bench_training.py

bench-codecs: $(VENV)/.installed
	$(PY) benchmarks/bench_codecs.py

bench-grpc: $(VENV)/.installed
	$(PY) benchmarks/bench_grpc.py

bench-split-grpc: $(VENV)/.installed
	$(PY) benchmarks/bench_split_grpc.py

clean:
	rm -rf $(VENV) runs

bench-compression: $(VENV)/.installed
	$(PY) benchmarks/bench_compression.py

bench-events: $(VENV)/.installed
	$(PY) benchmarks/bench_events.py

bench-secagg: $(VENV)/.installed
	$(PY) benchmarks/bench_secagg.py

bench-split: $(VENV)/.installed
	$(PY) benchmarks/bench_split.py

# flwr 1.42 declares protobuf<7, fedkit's stubs need protobuf 7 (flwr's own 5.29 stubs run on
# it): pip cannot resolve both in one install, so flwr goes in first and protobuf 7 after it.
$(VENV)/.flower: $(VENV)/.installed
	$(PIP) install 'flwr[simulation]==1.42.0'
	$(PIP) install 'protobuf>=7.35.1'
	touch $@

bench-flower: $(VENV)/.flower
	$(PY) benchmarks/bench_flower.py

bench-stragglers: $(VENV)/.installed
	$(PY) benchmarks/bench_stragglers.py

bench-async: $(VENV)/.installed
	$(PY) benchmarks/bench_async.py

bench-hostile: $(VENV)/.installed
	$(PY) benchmarks/bench_hostile.py

bench-wire: $(VENV)/.installed
	$(PY) benchmarks/bench_wire.py

bench-execution: $(VENV)/.dev  # the ray section needs ray (a dev extra)
	$(PY) benchmarks/bench_execution.py

bench-fedprox: $(VENV)/.installed
	$(PY) benchmarks/bench_fedprox.py

bench-split-modes: $(VENV)/.installed
	$(PY) benchmarks/bench_split_modes.py

bench-lora: $(VENV)/.installed  # needs peft (the fedkit[llm] extra)
	$(PY) benchmarks/bench_lora.py
