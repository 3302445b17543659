# Two commands: `make demo` and `make test`. Each sets up everything it needs itself.
# Override TORCH to pick another build, e.g. `make test TORCH="torch==2.13.0+cu128"` (documented in README).
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.medloop-installed

.PHONY: setup demo test clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	bash scripts/ensure-display-deps.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and pinned: an unpinned torch pulls gigabytes of CUDA wheels.
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: setup
	@if [ -n "$$DISPLAY$$WAYLAND_DISPLAY" ]; then $(BIN)/medloop demo; \
	else $(BIN)/medloop demo --screenshot medloop-demo.png; fi

test: setup
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) .pytest_cache
