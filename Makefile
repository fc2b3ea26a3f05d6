# plant-edge-agent: the two set-up commands are `make demo` and `make test`.
# Everything installs into .venv; nothing touches the system Python.

SHELL  := /bin/bash
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DEMO_ARGS ?=
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: install install-test demo hub-demo test lint bench clean mosquitto-binary packaging-tools nats-server deb \
        node-opcua chromium bench-peer

$(BIN)/python:
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ needed"' || \
	  { echo "plant-edge-agent needs Python 3.11 or newer as $(PYTHON)"; exit 1; }
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { \
	  rm -rf $(VENV); \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing python3-venv (apt-get)"; \
	    apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null && \
	    $(PYTHON) -m venv $(VENV); \
	  else \
	    echo "cannot create a virtualenv; run: sudo apt-get install -y python3-venv"; exit 1; \
	  fi; }
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	@touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test]'
	@touch $@ $(VENV)/.installed

install: $(VENV)/.installed

# A mosquitto binary for the tests (they start their own brokers on free loopback ports).
mosquitto-binary:
	@command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing mosquitto (apt-get)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null; \
	  else \
	    echo "the tests need mosquitto; run: sudo apt-get install -y mosquitto"; exit 1; \
	  fi; }

# What tests/e2e/test_packaging.py needs: Debian's python3 with venv, dpkg-shlibdeps and strip
# (packaging/build-deb), lintian (checks the .deb), systemd-analyze (verify and score the
# unit), /bin/kill (the unit's ExecReload), useradd, unshare and setpriv (the agent as the
# service user under a read-only system, as the unit runs it).
packaging-tools:
	@[ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import ensurepip' 2>/dev/null && \
	  command -v systemd-analyze >/dev/null && [ -x /bin/kill ] && \
	  command -v dpkg-shlibdeps >/dev/null && command -v strip >/dev/null && \
	  command -v lintian >/dev/null && command -v useradd >/dev/null && \
	  command -v unshare >/dev/null && command -v setpriv >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing python3-venv systemd procps dpkg-dev binutils lintian passwd" \
	      "util-linux (apt-get)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      python3-venv systemd procps dpkg-dev binutils lintian passwd util-linux >/dev/null; \
	  else \
	    echo "the packaging tests need: sudo apt-get install -y python3-venv systemd procps" \
	      "dpkg-dev binutils lintian passwd util-linux"; \
	    exit 1; \
	  fi; }

# node-opcua, a second OPC UA stack for tests/integration/test_node_opcua.py, from the npm
# registry into testkit/node_opcua/node_modules/ (git ignores it), exactly as
# package-lock.json pins it: about 15-20 s and 71 MB. node-opcua 2.182 runs on Node 18 or newer
# (Debian's nodejs is enough).
NODE_OPCUA := testkit/node_opcua
node-opcua: $(NODE_OPCUA)/node_modules/.installed

$(NODE_OPCUA)/node_modules/.installed: $(NODE_OPCUA)/package.json $(NODE_OPCUA)/package-lock.json
	@command -v node >/dev/null && command -v npm >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing nodejs npm (apt-get)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null; \
	  else \
	    echo "the node-opcua tests need node and npm; run: sudo apt-get install -y nodejs npm"; \
	    exit 1; \
	  fi; }
	cd $(NODE_OPCUA) && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

# Debian's headless Chromium for the dashboard tests (tests/hub/test_dashboard.py render the
# pages to PNG and read the DOM the browser built).
chromium:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing chromium (apt-get)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else \
	    echo "the dashboard tests need chromium; run: sudo apt-get install -y chromium"; exit 1; \
	  fi; }

# nats-server, whose MQTT gateway speaks only MQTT 3.1.1: the broker of the 3.1.1 hub tests
# (tests/integration/test_mqtt311.py, tests/hub/test_mqtt311_hub.py start private instances).
nats-server:
	@command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ] || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing nats-server (apt-get)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server >/dev/null; \
	  else \
	    echo "the MQTT 3.1.1 tests need nats-server; run: sudo apt-get install -y nats-server"; \
	    exit 1; \
	  fi; }

# The .deb in dist/ (see packaging/build-deb).
deb:
	packaging/build-deb --out dist

# ruff, then mypy --strict over the same tree: the packages, testkit/, tests/ and bench/ (the
# list is [tool.mypy] packages in pyproject.toml, so a bare `mypy` checks exactly this).
lint: $(VENV)/.installed-test
	$(BIN)/ruff check agent connectors buffer config events hub tests bench testkit
	$(BIN)/mypy

# Two pytest workers (pytest-xdist), a whole test file to each (--dist loadfile: a file's
# session fixtures, such as the .deb build, run once); PYTEST_WORKERS=0 runs in one process.
PYTEST_WORKERS ?= 2
test: $(VENV)/.installed-test mosquitto-binary packaging-tools node-opcua chromium nats-server lint
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# Starts a local mosquitto on 1883 for the demo when the binary exists and nothing listens there.
demo: $(VENV)/.installed
	@MOSQ=$$(command -v mosquitto || ls /usr/sbin/mosquitto 2>/dev/null || true); \
	if ! (exec 3<>/dev/tcp/127.0.0.1/1883) 2>/dev/null && [ -n "$$MOSQ" ]; then \
	  echo "starting a local mosquitto on 127.0.0.1:1883 for the demo"; \
	  $$MOSQ -p 1883 >/dev/null 2>&1 & MPID=$$!; \
	  trap "kill $$MPID 2>/dev/null" EXIT INT TERM; sleep 0.5; \
	fi; \
	$(BIN)/edge-agent demo $(DEMO_ARGS)

# The whole path on one machine: the demo plant and agent, a hub landing in this machine's
# PostgreSQL (database edge_demo, made if missing) and its dashboard on 127.0.0.1:8780.
hub-demo:
	$(MAKE) demo DEMO_ARGS="--with-hub $(DEMO_ARGS)"

# The agent against this machine's limits and beside the peer (issues 8 and 18): a table, and
# bench/results.json; ~35 min with the peer (3 repetitions). BENCH_ARGS=--quick for a short smoke
# run; --repetitions N; --out FILE; --profile DIR (needs py-spy).
bench: $(VENV)/.installed-test mosquitto-binary
	$(BIN)/python -m bench.run $(BENCH_ARGS)

# ThingsBoard IoT Gateway, the peer `make bench` measures side by side (issue 18), in its own
# venv (git ignores it), never in .venv: the bench skips the peer, saying why, when it is absent.
PEER_VENV := .bench-peer-venv
PEER_VERSION ?= 3.8.5
bench-peer: $(PEER_VENV)/.installed

$(PEER_VENV)/.installed:
	$(PYTHON) -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/python -m pip install -q --upgrade pip
	$(PEER_VENV)/bin/python -m pip install -q 'thingsboard-gateway==$(PEER_VERSION)' 'asyncua==1.1.5'
	@touch $@

clean:
	rm -rf $(VENV) demo-state .pytest_cache .mypy_cache .ruff_cache $(NODE_OPCUA)/node_modules
