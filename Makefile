# fnserve — the two commands a newcomer needs are `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PORT   ?= 8080
STATE  ?= .fnserve
EXAMPLE := functions/sentiment
# the example's model is a run published by its training job into $(STATE)/artifacts/sentiment/
MODEL  := $(STATE)/.example-trained

.PHONY: install run example test test-fast lint bench render schemas loadtest clean help

help:
	@echo "make run      install, train the example, start fnserve on :$(PORT) with functions/sentiment"
	@echo "make test     install if needed, make lint, then the whole test suite (what CI runs)"
	@echo "make test-fast the tests not marked slow, without lint (the inner loop)"
	@echo "make lint     ruff, the import contracts (lint-imports) and the type checker (mypy)"
	@echo "make bench    benchmarks; results in bench/results/ (summary.md is committed)"
	@echo "make loadtest Locust against a function (USERS, DURATION, SHAPE, FUNCTION, SLO_P95); reports in loadtests/reports/"
	@echo "make render   regenerate manifests/examples/ (the cluster objects of every example function)"
	@echo "make schemas  regenerate schemas/ (the manifests' JSON Schemas the examples' modelines name)"
	@echo "make example  train the example model with its training job (functions/sentiment/train.yaml)"

install: $(STAMP)

# torch goes in first, pinned by constraints.txt to the CPU build on this machine's wheel store;
# the same constraints apply to the project install, so nothing can pull a CUDA torch afterwards.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt torch
	$(PY) -m pip install -q -c constraints.txt -e '.[dev,examples]'
	touch $(STAMP)

example: $(MODEL)

$(MODEL): $(STAMP) $(EXAMPLE)/train.yaml $(EXAMPLE)/train.py $(EXAMPLE)/featurize.py $(EXAMPLE)/data/reviews.csv
	$(VENV)/bin/fnserve train --local --state-dir $(STATE) $(EXAMPLE)
	touch $(MODEL)

run: $(STAMP) $(MODEL)
	@echo "fnserve: try   curl -s localhost:$(PORT)/v1/models/sentiment:predict -d '{\"instances\": [\"what a wonderful film\"]}'"
	@echo "fnserve: or open http://localhost:$(PORT)/ (the web console; sign in with the key in $(STATE)/admin.key)"
	$(VENV)/bin/fnserve up --port $(PORT) --state-dir $(STATE) --deploy $(EXAMPLE)

# lint first, so CI (.ci/run → make test) enforces the layer rules and the types as well as the tests
test: lint
	$(PY) -m pytest

# no lint here: the inner loop should show test results even while a type is still wrong
test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow"

bench: $(STAMP)
	$(PY) -m bench.router_overhead
	$(PY) -m bench.load_curve
	$(PY) -m bench.auth_overhead
	$(PY) -m bench.cold_start
	$(PY) -m bench.batching
	$(PY) -m bench.quota_accuracy
	$(PY) -m bench.streaming
	$(PY) -m bench.shared_quota
	$(PY) -m bench.observability
	$(PY) -m bench.console
	$(PY) -m bench.summarize

# a bounded headless Locust run; override e.g. `make loadtest USERS=32 DURATION=60 SHAPE=spike FUNCTION=embeddings`,
# or target a running router with FNSERVE_URL and FNSERVE_API_KEY
USERS ?= 8
DURATION ?= 30
SHAPE ?= steady
FUNCTION ?= sentiment
SLO_P95 ?= 1000
loadtest: $(STAMP)
	$(PY) -m loadtests.run --users $(USERS) --duration $(DURATION) --shape $(SHAPE) --function $(FUNCTION) \
	  --slo-p95 "$(SLO_P95)"

# the objects every example becomes in a cluster; a test fails when they are not current
render: $(STAMP)
	rm -rf manifests/examples && for f in functions/*/; do \
	  $(VENV)/bin/fnserve render --defaults $$f $$(test -f $$f/train.yaml && echo $$f/train.yaml) \
	    -o manifests/examples/$$(basename $$f) 2>/dev/null || exit 1; done

# the JSON Schemas the example manifests name in their yaml-language-server modeline; a test fails when not current
schemas: $(STAMP)
	$(VENV)/bin/fnserve schema --kind Function > schemas/function-v1.json
	$(VENV)/bin/fnserve schema --kind TrainingJob > schemas/trainingjob-v1.json

# the contracts and mypy's settings are in pyproject.toml; docs/architecture.md ("Layer rules") says them in
# words. All three run, so one pass shows every problem; any failure fails the target.
lint: $(STAMP)
	@status=0; \
	$(VENV)/bin/ruff check fnserve runtimes functions tests bench loadtests || status=1; \
	$(VENV)/bin/lint-imports --no-logo || status=1; \
	$(VENV)/bin/mypy || status=1; \
	exit $$status

clean:
	rm -rf $(STATE) $(EXAMPLE)/model .pytest_cache
