# The two commands of the README: `make quickstart` and `make test`.
# Both create (once) a project virtualenv in .venv with everything the tool and its tests need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: quickstart test bench browser

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[tflite,coreml,dev]"
	touch $@

quickstart: $(BIN)/.installed
	$(BIN)/styleslim run recipes/quickstart.yaml

# The report tests drive a real headless browser (Debian's chromium).
# `dpkg --configure -a` first finishes any install a machine left interrupted (a no-op otherwise),
# which would make apt-get refuse to install anything.
browser:
	@command -v chromium >/dev/null || { export DEBIAN_FRONTEND=noninteractive; dpkg --configure -a && apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; }

# The versions tested, the import contracts (pyproject.toml [tool.importlinter]), the tests, then the docs site.
test: $(BIN)/.installed browser
	@$(BIN)/python -c "import importlib.metadata as m; print('tested with', ', '.join(f'{p} {m.version(p)}' for p in ('torch', 'torchvision', 'onnxruntime', 'ai-edge-litert', 'coremltools', 'torch-pruning')))"
	$(BIN)/lint-imports
	$(BIN)/pytest
	$(BIN)/mkdocs build --strict --quiet --site-dir build/site

bench: $(BIN)/.installed
	$(BIN)/python -m benchmarks
