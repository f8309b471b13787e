# Two commands set everything up: `make serve` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install serve test lint bench-engine bench-gateway bench-routers bench-scheduling bench-agents clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# The embedded default: two in-process tiny engines (built on first start) behind route group `auto`,
# outcomes in var/pitstop.db, at http://127.0.0.1:8000 (OpenAI base URL http://127.0.0.1:8000/v1).
serve: $(STAMP)
	$(VENV)/bin/pitstop serve --config config/pitstop.yaml

# The suite runs a worker a core (pytest-xdist; `worksteal` hands a busy worker's queued tests to an idle
# one); tests/conftest.py gives each worker one thread. Serially: make test PYTEST_WORKERS=0; more pytest
# options: make test PYTEST_ARGS="-x tests/engine".
PYTEST_WORKERS ?= auto
PYTEST_ARGS ?=

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench-engine: $(STAMP)
	$(PY) -m bench.engine_cpu
	$(PY) -m bench.sim_speed
	$(PY) -m bench.sim_fidelity
	$(PY) -m bench.engine_tool_calls
	$(PY) -m bench.custom_tools
	$(PY) -m bench.moe
	$(PY) -m bench.spec_decode
	$(PY) -m bench.spec_decode_sim
	$(PY) -m bench.spec_decode_goodput
	$(PY) -m bench.draft_model
	$(PY) -m bench.lora
	$(PY) -m bench.weight_update
	$(PY) -m bench.sleep_mode
	$(PY) -m bench.engine_embeddings
	$(PY) -m bench.sliding_window
	$(PY) -m bench.tensor_parallel
	$(PY) -m bench.thinking_budget
	$(PY) -m bench.engine_int4

bench-gateway: $(STAMP)
	$(PY) -m pip install -q -e '.[bench]'
	LITELLM_LOCAL_MODEL_COST_MAP=True $(PY) -m bench.gateway_overhead $(BENCH_GATEWAY_ARGS)
	$(PY) -m bench.outcome_export
	$(PY) -m bench.gateway_verify
	$(PY) -m bench.gateway_fallbacks
	$(PY) -m bench.gateway_hedging
	$(PY) -m bench.gateway_balancing
	$(PY) -m bench.gateway_deployment_limits
	$(PY) -m bench.gateway_deployment_limits_shared
	$(PY) -m bench.gateway_deployment_limits_shared --rate 20 --quota-rpm 200 --duration 20 --sync-interval 0.25 1 --out bench/results/gateway_deployment_limits_shared_20rps.json
	$(PY) -m bench.gateway_embeddings
	$(PY) -m bench.gateway_rerank
	$(PY) -m bench.gateway_soak
	$(PY) -m bench.gateway_stored_responses
	$(PY) -m bench.gateway_conversations
	$(PY) -m bench.gateway_dialects
	$(PY) -m bench.gateway_batches
	$(PY) -m bench.background_takeover
	$(PY) -m bench.token_counts
	$(PY) -m bench.gateway_cache
	$(PY) -m bench.gateway_semantic_cache
	$(PY) -m bench.outcome_retention
	$(PY) -m bench.usage_queries
	$(PY) -m bench.truncation
	$(PY) -m bench.compaction
	$(PY) -m bench.mcp_tools
	$(PY) -m bench.limits_holds
	$(PY) -m bench.webhooks
	$(PY) -m bench.stored_completions
	$(PY) -m bench.tracing
	$(PY) -m bench.guardrails

# Learned routers: every family on RouterBench, GSM8K, MMLU (bench/results/routers/), the encoder trade-off,
# the headroom analysis, the answer-length-as-difficulty ablation, route-group calibration (how close a
# budget lands), and what routing adds in the gateway
# (bench/results/gateway_routing.json).
bench-routers: $(STAMP)
	OMP_NUM_THREADS=1 $(VENV)/bin/pitstop eval router --data routerbench gsm8k mmlu
	OMP_NUM_THREADS=1 $(PY) -m bench.router_encoders
	OMP_NUM_THREADS=1 $(PY) -m bench.router_length_signal
	OMP_NUM_THREADS=1 $(PY) -m bench.router_headroom
	OMP_NUM_THREADS=1 $(PY) -m bench.route_calibration
	OMP_NUM_THREADS=1 $(PY) -m bench.router_off_policy
	$(PY) -m bench.gateway_overhead --systems pitstop,pitstop-routed --routed-prompt --rates 50,200 \
		--no-search --out bench/results/gateway_routing.json

# Output-length ranking: the ranker report (bench/results/rankers/) and FCFS vs rank vs oracle scheduling.
bench-scheduling: $(STAMP)
	OMP_NUM_THREADS=1 $(VENV)/bin/pitstop eval ranker
	OMP_NUM_THREADS=2 $(PY) -m bench.ranker_listmle
	OMP_NUM_THREADS=1 $(PY) -m bench.ranker_listmle_latency
	OMP_NUM_THREADS=2 $(PY) -m bench.ranker_listmle_blend
	OMP_NUM_THREADS=1 $(PY) -m bench.ranker_blend_sources rankers/artifacts/default.joblib
	OMP_NUM_THREADS=2 $(PY) -m bench.ranker_listmle_distil
	$(PY) -m bench.ranking_offload
	OMP_NUM_THREADS=1 $(PY) -m bench.scheduling
	OMP_NUM_THREADS=1 $(PY) -m bench.scheduling --requests 19366 --workloads mixed-mixtral --rates 90,100,110,120 \
		--skip-torch --out bench/results/scheduling_full_trace_mixed.json
	OMP_NUM_THREADS=1 $(PY) -m bench.scheduling --requests 19366 --workloads alpaca-llama3-8b --rates 40,45,50,55 \
		--skip-torch --out bench/results/scheduling_full_trace_alpaca.json
	OMP_NUM_THREADS=1 $(PY) -m bench.scheduling --workloads alpaca-llama3-8b,mixed-mixtral --rates 200,400,800,100000 \
		--skip-torch --out bench/results/scheduling_overload.json
	OMP_NUM_THREADS=1 $(PY) -m bench.scheduling_key_shapes
	OMP_NUM_THREADS=1 $(PY) -m bench.scheduling_preemption
	OMP_NUM_THREADS=1 $(PY) -m bench.scheduling_prefill_weight

# Agent sessions: JCT of SWE-agent programs under KV pressure, four pinning policies (bench/results/agents.json),
# with a host KV tier (bench/results/host_kv.json) and a disk tier behind it, across a restart (disk_kv.json).
bench-agents: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m bench.agents
	for seed in 1 2; do OMP_NUM_THREADS=1 $(PY) -m bench.agents --seed $$seed --skip-torch \
	  --out bench/results/agents_seed$$seed.json; done
	OMP_NUM_THREADS=1 $(PY) -m bench.agents --models llama-3.1-8b llama-3.1-70b --kv-fraction 1.0 --programs 160 \
	  --rates 0.1 0.2 0.3 0.4 0.8 1.6 --skip-torch --out bench/results/agents_full_kv.json
	for seed in 1 2; do OMP_NUM_THREADS=1 $(PY) -m bench.agents --seed $$seed --models llama-3.1-70b --kv-fraction 1.0 \
	  --programs 160 --rates 0.2 0.3 0.4 0.8 1.6 --skip-torch --out bench/results/agents_full_kv_seed$$seed.json; done
	OMP_NUM_THREADS=1 $(PY) -m bench.agents_ranked
	OMP_NUM_THREADS=1 $(PY) -m bench.host_kv
	OMP_NUM_THREADS=1 $(PY) -m bench.host_kv --models llama-3.1-8b llama-3.1-70b --kv-fraction 1.0 --programs 160 \
	  --rates 0.3 0.8 --host-ratios 0 4 --skip-torch --out bench/results/host_kv_full_kv.json
	OMP_NUM_THREADS=1 $(PY) -m bench.disk_kv
	OMP_NUM_THREADS=1 $(PY) -m bench.kv_fp8
	OMP_NUM_THREADS=1 $(PY) -m bench.quantization
	OMP_NUM_THREADS=1 $(PY) -m bench.prefix_routing

clean:
	rm -rf $(VENV) var .pytest_cache
