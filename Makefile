# make install · demo · test · bench · lint · cluster-up · cluster-down
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: install demo test test-fast bench lint cluster-up cluster-down clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: the CPU wheel, not a multi-GB CUDA build pulled in by a looser requirement
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: install
	$(VENV)/bin/ray-app demo --spec tuning/default.yaml

lint: install
	$(VENV)/bin/ruff check .

test: install lint
	RAY_AUTH_MODE=token $(PY) -m pytest $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

bench: install
	$(PY) bench/serve_latency.py

# A local head node on loopback with the dashboard (Jobs API, `serve deploy`); Ray 2.60 wants a token.
cluster-up: install
	RAY_AUTH_MODE=token PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/ray start --head \
	  --node-ip-address=127.0.0.1 --dashboard-host=127.0.0.1 --disable-usage-stats

cluster-down:
	-$(VENV)/bin/ray stop

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache bench/out
