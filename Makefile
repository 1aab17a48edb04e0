# make install · demo · test · bench · bench-scale · lint · cluster-up · cluster-down · monitor-up · monitor-down · image
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: install system-deps demo test test-fast bench bench-scale lint cluster-up cluster-down monitor-up monitor-down image image-gpu clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: the CPU wheel, not a multi-GB CUDA build pulled in by a looser requirement
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# Prometheus, promtool, Alertmanager and amtool from Debian: the rule tests and the alerting end-to-end test use them.
system-deps:
	@command -v promtool >/dev/null && command -v prometheus-alertmanager >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
	    prometheus prometheus-alertmanager >/dev/null; }

demo: install
	$(VENV)/bin/ray-app demo --spec tuning/default.yaml

lint: install
	$(VENV)/bin/ruff check .

# Two sessions, one Ray cluster each: the suite on a one-node cluster, then the tests marked `cluster` on a head
# with no CPUs and three worker nodes (tests/multinode). Both run, and either failing fails the target.
test: install system-deps lint
	RAY_AUTH_MODE=token $(PY) -m pytest $(PYTEST_ARGS); suite=$$?; \
	RAY_AUTH_MODE=token $(PY) -m pytest -m cluster tests/multinode $(PYTEST_ARGS); nodes=$$?; \
	test $$suite = 0 && test $$nodes = 0

test-fast: install
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

bench: install
	$(PY) bench/serve_latency.py
	$(PY) bench/serve_vs_fastapi.py

ROWS ?= 1000000
bench-scale: install  # the data plane: make bench-scale ROWS=10000000
	$(PY) bench/scale.py --rows $(ROWS)

# A local cluster on loopback with token auth (~/.ray/auth_token, made if missing), laid out as KubeRay's: a head that
# schedules no work (dashboard, Jobs API, `serve deploy`, job drivers) and NODES worker nodes, each with its own
# raylet, CPUs (max(6, cores) shared out, at least 2 each; CPUS_PER_NODE=n) and object store. NODES=0: the head does
# the work. RAY_APP_HOME and RAY_APP_STORAGE (a file:// URI) are set on every node, so jobs need no flags.
# INGRESS=haproxy (with NODES=0): Serve behind Ray's HAProxy ingress (frontend on 127.0.0.1:8000; README, serving).
NODES ?= 1
INGRESS ?= proxy
cluster-up: install
	$(if $(filter haproxy,$(INGRESS)),RAY_SERVE_ENABLE_HA_PROXY=1) $(PY) -m ray_app.local_cluster up --nodes $(NODES) \
	  $(if $(CPUS_PER_NODE),--cpus-per-node $(CPUS_PER_NODE))

# Ray 2.60 leaves the HAProxy of INGRESS=haproxy running after `ray stop`, bound to 8000, 8404 and 9101
cluster-down:
	-$(PY) -m ray_app.local_cluster down
	-pkill -f 'ray_haprox[y]/bin/haproxy .*haproxy-serve' || true

# The image of cluster/kuberay and cluster/launcher (needs Docker); tag it for your registry and push it.
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
image:
	docker build -f cluster/Dockerfile -t ray-app:$(VERSION)-cpu .

image-gpu:
	docker build -f cluster/Dockerfile -t ray-app:$(VERSION)-gpu \
	  --build-arg BASE=rayproject/ray:2.60.0-py311-gpu --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .

# Prometheus (scrapes Ray's service-discovery file; rules in cluster/prometheus/rules) on 127.0.0.1:9090 and
# Alertmanager on 127.0.0.1:9093, routing retrain alerts to `ray-app webhook` on :9095 with RAY_APP_ADMIN_TOKEN.
RUN := .run
monitor-up: system-deps
	@test -n "$$RAY_APP_ADMIN_TOKEN" || { echo "set RAY_APP_ADMIN_TOKEN (the webhook's bearer token)"; exit 1; }
	mkdir -p $(RUN)
	umask 077 && printf %s "$$RAY_APP_ADMIN_TOKEN" > cluster/alertmanager/webhook_token
	nohup prometheus --config.file=cluster/prometheus/prometheus.yml --storage.tsdb.path=$(RUN)/prometheus \
	  --web.listen-address=127.0.0.1:9090 > $(RUN)/prometheus.log 2>&1 & echo $$! > $(RUN)/prometheus.pid
	nohup prometheus-alertmanager --config.file=cluster/alertmanager/alertmanager.yml \
	  --storage.path=$(RUN)/alertmanager --web.listen-address=127.0.0.1:9093 --cluster.listen-address= \
	  > $(RUN)/alertmanager.log 2>&1 & echo $$! > $(RUN)/alertmanager.pid
	@echo "Prometheus http://127.0.0.1:9090  Alertmanager http://127.0.0.1:9093  (logs in $(RUN)/)"
	@echo "then: $(VENV)/bin/ray-app webhook --spec tuning/default.yaml   (retrains on drift alerts)"

monitor-down:
	-kill $$(cat $(RUN)/prometheus.pid $(RUN)/alertmanager.pid 2>/dev/null) 2>/dev/null
	rm -f $(RUN)/*.pid

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache bench/out $(RUN)
