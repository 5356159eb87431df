# The two commands of the README: `make quickstart` and `make test`.
# Both create (once) a project virtualenv in .venv with everything the tool and its tests need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: quickstart test bench browser web

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[tflite,coreml,web,dev]"
	touch $@

quickstart: $(BIN)/.installed browser web
	$(BIN)/styleslim run recipes/quickstart.yaml

# The report tests drive a real headless browser (Debian's chromium).
# `dpkg --configure -a` first finishes any install a machine left interrupted (a no-op otherwise),
# which would make apt-get refuse to install anything.
browser:
	@command -v chromium >/dev/null || { export DEBIAN_FRONTEND=noninteractive; dpkg --configure -a && apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; }

# The web runtimes (onnxruntime-web, LiteRT.js) from the npm registry, exactly as web/package-lock.json pins
# them; styleslim serves them to the browser and copies them into exported web pages (never a CDN).
web: web/node_modules/.installed
web/node_modules/.installed: web/package-lock.json
	npm ci --prefix web --no-audit --no-fund --ignore-scripts --loglevel=error
	touch $@

# The versions tested, the import contracts (pyproject.toml [tool.importlinter]), the tests, then the docs site.
test: $(BIN)/.installed browser web
	@$(BIN)/python -c "import importlib.metadata as m; print('tested with', ', '.join(f'{p} {m.version(p)}' for p in ('torch', 'torchvision', 'onnxruntime', 'ai-edge-litert', 'coremltools', 'torch-pruning')))"
	$(BIN)/lint-imports
	$(BIN)/pytest
	$(BIN)/mkdocs build --strict --quiet --site-dir build/site

bench: $(BIN)/.installed
	$(BIN)/python -m benchmarks
