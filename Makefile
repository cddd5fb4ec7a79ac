# The two commands: `make up` starts the stack, `make test` runs every test. Both set the machine up first.
# MODE=compose|native forces a run mode (default: Compose when a Docker engine answers, else native).
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SETUP_STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt tests/clients/requests-suite.txt | cksum | cut -d' ' -f1)
PYTEST_ARGS ?=

.PHONY: help setup system-deps test-deps up down restart reload ps logs urls test lint fmt lock clean clean-data loadtest loadtest-headless soak chaos compare scaling stores kubernetes swarm-up swarm-down \
        trace trace-dns rawhttp tcp-vs-udp iolab docs docs-serve

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(SETUP_STAMP): pyproject.toml constraints.txt tests/clients/requests-suite.txt
	@echo "[setup] creating $(VENV) and installing the pinned packages"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --disable-pip-version-check pip==26.3
	@$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt --group dev
	@# httpbin.org's code, the reference tests/unit/test_httpbin_reference.py compares ours with, at the version
	@# constraints.txt pins, without its declared dependencies (pyproject.toml's "reference" group says why).
	@$(PY) -m pip install -q --disable-pip-version-check --no-deps -c constraints.txt httpbin
	@# requests' own test suite, from its sdist (hash-pinned), which tests/e2e/test_native.py runs against our
	@# httpbin through nginx: fetched here, never at test time.
	@rm -rf $(VENV)/client-suites && $(PY) -m pip download -q --disable-pip-version-check --no-deps \
	    --no-binary :all: --require-hashes -r tests/clients/requests-suite.txt -d $(VENV)/client-suites
	@tar -xzf $(VENV)/client-suites/requests-*.tar.gz -C $(VENV)/client-suites
	@rm -f $(VENV)/.installed-* && touch $@

setup: $(SETUP_STAMP) system-deps  ## virtual environment, pinned packages, nginx (as root on Debian)

system-deps:
	@deploy/native/system-deps.sh

up: setup  ## start the stack and wait until every hop answers; SCALE="web=3 catalog=2" sets instances (default 2 each)
	@$(PY) -m deploy up

down:  ## stop everything `make up` started
	@if [ -x $(PY) ]; then $(PY) -m deploy down; fi

restart: setup  ## restart every instance of SERVICE=web|catalog|httpbin (default: all), one at a time, no downtime
	@$(PY) -m deploy restart $(foreach s,$(SERVICE),--service $(s))

reload:  ## nginx re-reads its config; old workers finish their requests (no connection is dropped mid-request)
	@$(PY) -m deploy reload

ps:  ## each service's state and health
	@$(PY) -m deploy ps

logs:  ## follow every service's log
	@$(PY) -m deploy logs

urls:  ## print the stack's URLs
	@$(PY) -m deploy urls

trace: setup  ## follow one request through every hop: make trace URL=/catalog/json [TLS=1|HTTP=3] [FORMAT=svg|html] (as root: with its packets)
	@$(PY) -m wire.trace $(if $(TLS),--tls) $(if $(HTTP),--http $(HTTP)) $(if $(FORMAT),--format $(FORMAT)) $(if $(OUT),--out $(OUT)) $(URL)

trace-dns: setup  ## DNS over UDP, truncated (TC), then over TCP
	@$(PY) -m wire.dns_truncation

rawhttp: setup  ## HTTP/1.1 by hand on a raw socket: keep-alive, chunked (checked by h11), close: URL=...
	@$(PY) -m wire.rawhttp $(URL)

tcp-vs-udp: setup  ## the time service over TCP and over UDP, side by side [FORMAT=svg|html: drawn from a capture, as root]
	@$(PY) -m services.sockets.client compare
	@$(PY) -m wire.quic compare
	@$(if $(FORMAT),$(PY) -m wire.tcp_vs_udp --format $(FORMAT) $(if $(OUT),--out $(OUT)))

loadtest: setup  ## Locust's web UI on http://127.0.0.1:8089 against the running stack (WORKERS=2)
	@$(PY) -m loadtest ui

loadtest-headless: setup  ## a bounded Locust run: USERS=50 RATE=10 TIME=30s CLASSES=...; report in reports/
	@$(PY) -m loadtest headless

soak: setup  ## the locustfile's mix against the running native stack: MINUTES=10 USERS=100; p99 and RSS over time
	@$(PY) -m loadtest soak

chaos: setup  ## faults under Locust's mix against the running stack, failures per fault: USERS=20 FAULTS=nginx-reload,...
	@$(PY) -m loadtest.chaos

compare: setup  ## worker classes and frameworks side by side: reports/compare-<time>/ (QUICK=1: ~2 min; CONFIGS=, WORKLOADS=)
	@$(PY) -m loadtest compare

scaling: setup  ## throughput, p99 and CPU per tier at 1, 2 and 4 instances of each service: reports/scaling-<time>/
	@$(PY) -m loadtest.scaling

stores: setup  ## SQLite against Postgres through the stack: reads and writes, CPU per tier: reports/stores-<time>/
	@$(PY) -m loadtest.stores

iolab: setup  ## the IO-models lab side by side: reports/iolab-<time>/ (QUICK=1: ~2 min; SERVERS=epoll-lt,io_uring)
	@$(PY) -m iolab.run

# Material for MkDocs prints an end-of-life banner on every build; the pinned version is what the site is tested with.
DOCS_ENV := NO_MKDOCS_2_WARNING=1

docs: $(SETUP_STAMP)  ## the documentation site, offline and strict (a broken link or anchor fails): var/site/index.html
	@$(DOCS_ENV) $(VENV)/bin/mkdocs build --strict --quiet && echo "var/site/index.html"

docs-serve: $(SETUP_STAMP)  ## serve the documentation on http://127.0.0.1:8000/, rebuilt as you edit
	@$(DOCS_ENV) $(VENV)/bin/mkdocs serve --strict --dev-addr 127.0.0.1:8000

lint: $(SETUP_STAMP)  ## ruff
	@$(VENV)/bin/ruff check .

test-deps:
	@deploy/native/system-deps.sh test

test: setup test-deps lint docs  ## every test: unit, config, native end-to-end, Compose and Swarm end-to-end (skipped without Docker)
	@$(PY) -m pytest --durations=25 $(PYTEST_ARGS)

fmt: $(SETUP_STAMP)
	@$(VENV)/bin/ruff check --fix .

swarm-up: setup  ## deploy the stack on this engine's swarm (docker swarm init first); nginx on 127.0.0.1:8080
	@$(PY) -m deploy.swarm up

swarm-down:  ## remove the Swarm stack
	@$(PY) -m deploy.swarm down

kubernetes: setup  ## build the Kubernetes manifests offline into var/kubernetes/{dev,production}.yaml (never applied)
	@$(PY) -m deploy.render --mode kubernetes --nginx-out deploy/kubernetes/base/nginx.conf
	@mkdir -p var/kubernetes
	@for overlay in dev production; do \
	   kubectl kustomize deploy/kubernetes/overlays/$$overlay > var/kubernetes/$$overlay.yaml && echo "var/kubernetes/$$overlay.yaml"; \
	 done

lock: $(SETUP_STAMP)  ## re-pin every transitive dependency into constraints.txt
	@{ echo "# Every transitive pin of the dev group (which includes every service group). Regenerate: make lock"; \
	   $(PY) -m pip freeze --exclude pip; } > constraints.txt

clean: down  ## stop, then remove the venv, caches, logs and pid files; the databases stay (make clean-data)
	rm -rf $(VENV) .pytest_cache .ruff_cache
	@if [ -d var ]; then find var -mindepth 1 -maxdepth 1 ! -name data -exec rm -rf {} +; fi

clean-data: $(SETUP_STAMP) down  ## delete the services' data (var/data, Compose's volumes), listing what it deletes
	@$(PY) -m deploy clean-data
