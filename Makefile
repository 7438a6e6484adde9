# The two set-up commands of the README: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MODEL ?= smollm2-135m
# The best drafter available for the default model (see docs/BENCHMARKS.md).
DRAFTER ?= lookup
PROMPT ?= Explain in three sentences why speculative decoding does not change the output.

.PHONY: install run test test-fast bench-plain bench-spec clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

run: install
	$(VENV)/bin/specdraft models pull $(MODEL)
	$(VENV)/bin/specdraft generate --model $(MODEL) --drafter $(DRAFTER) "$(PROMPT)"

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not integration"

bench-plain: install
	$(PY) benchmarks/plain.py --model $(MODEL)

bench-spec: install
	$(PY) benchmarks/speculative.py --model $(MODEL) --methods plain,$(DRAFTER)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build src/*.egg-info
