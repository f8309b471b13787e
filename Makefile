# Two commands set everything up: `make serve` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
MODEL_DIR ?= var/models/tiny-chat

.PHONY: install serve test lint bench-engine bench-gateway clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# Until the gateway lands, `serve` runs one engine instance on a tiny local model, OpenAI-compatible.
serve: $(STAMP)
	test -f $(MODEL_DIR)/config.json || $(VENV)/bin/pitstop engine make-tiny-model $(MODEL_DIR) --layers 4 --hidden 128
	$(VENV)/bin/pitstop engine serve --model $(MODEL_DIR) --host 127.0.0.1 --port 8000 --served-model-name tiny-chat

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench-engine: $(STAMP)
	$(PY) -m bench.engine_cpu
	$(PY) -m bench.sim_speed
	$(PY) -m bench.sim_fidelity

bench-gateway: $(STAMP)
	$(PY) -m pip install -q -e '.[bench]'
	LITELLM_LOCAL_MODEL_COST_MAP=True $(PY) -m bench.gateway_overhead $(BENCH_GATEWAY_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache
