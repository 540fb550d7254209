# SystemHealer — `make demo` runs the main job, `make test` runs the tests (each sets up first).
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed
export SYSTEMHEALER_HOME ?= $(CURDIR)/.systemhealer
export PREFECT_SERVER_ANALYTICS_ENABLED = false
export BENTOML_DO_NOT_TRACK = true
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast lint format bench soak serve bento mlflow-ui clean browser

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned: pip then takes the local CPU wheel, not a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -r requirements.txt -r requirements-dev.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

setup: $(STAMP) ## venv + pinned install

demo: setup ## validate, train, register, score the shipped data, then serve
	bash scripts/demo.sh

test: setup ## the whole test suite
	$(BIN)/pytest $(PYTEST_ARGS)

test-fast: setup ## unit tests only
	$(BIN)/pytest -m "not integration and not browser" $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check src flows tests benchmarks
	$(BIN)/ruff format --check src flows tests benchmarks

format: setup
	$(BIN)/ruff format src flows tests benchmarks
	$(BIN)/ruff check --fix src flows tests benchmarks

bench: setup ## benchmark tables (serving, batch scoring, web file jobs)
	$(BIN)/python -m benchmarks.run

soak: setup ## load for minutes: 32 clients, champion swaps, zero errors expected, memory before/after
	$(BIN)/python -m benchmarks.soak --duration 180 --clients 32

serve: setup
	$(BIN)/systemhealer serve

bento: setup ## package the service + champion as a Bento (offline bentoml build)
	$(BIN)/systemhealer bento

mlflow-ui: setup ## the MLflow UI on the embedded store, http://127.0.0.1:5000
	$(BIN)/mlflow server --backend-store-uri sqlite:///$(SYSTEMHEALER_HOME)/mlflow.db \
		--default-artifact-root $(SYSTEMHEALER_HOME)/mlartifacts --host 127.0.0.1 --port 5000

browser: ## Debian's headless Chromium for the browser tests (needs root)
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)

clean:
	rm -rf $(SYSTEMHEALER_HOME) out
