# flatnet — `make demo` builds and checks the demo lab; `make test` runs everything.
# Both install what they need on a fresh Debian machine (as root, non-interactive).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEBS := python3 gcc libc6-dev ethtool time nftables iproute2 iputils-ping etcd-server containernetworking-plugins iperf3 iptables dnsmasq-base dnsperf bind9-dnsutils conntrack bird2 haproxy
STAMP_DEBS := $(VENV)/.debs-installed
STAMP_PY := $(VENV)/.py-installed

.PHONY: all deps demo test lint unit privileged bench clean

all: test

$(STAMP_DEBS): Makefile
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@mkdir -p $(VENV) && touch $@

$(STAMP_PY): pyproject.toml | $(STAMP_DEBS)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $@

deps: $(STAMP_DEBS) $(STAMP_PY)

demo: deps
	@$(PY) -m flatnet lab down demo >/dev/null 2>&1 || true
	$(PY) -m flatnet lab up examples/demo.yaml
	$(PY) -m flatnet get nodes --lab demo
	$(PY) -m flatnet get pods -A --lab demo
	$(PY) -m flatnet get services -A --lab demo
	$(PY) -m flatnet lab fast-path --lab demo
	@status=0; \
	for i in 1 2 3; do \
	  $(PY) -m flatnet lab exec --lab demo client -- $(PY) -m flatnet.agnhost get http://web/hostname || status=1; \
	  echo "  <- client: GET http://web/hostname (kube-dns, then the ClusterIP)"; \
	done; \
	$(PY) -m flatnet lab exec --lab demo external -- $(PY) -m flatnet.agnhost get http://192.168.50.11:30080/clientip || status=1; \
	echo "  <- external host: GET http://node1:30080/clientip (NodePort)"; \
	$(PY) -m flatnet lab check --lab demo || status=$$?; \
	if [ -z "$$KEEP" ]; then $(PY) -m flatnet lab down demo; \
	else echo "lab kept: flatnet lab exec --lab demo client -- ping 10.244.0.2; flatnet lab down demo"; fi; \
	exit $$status

lint: deps
	$(VENV)/bin/ruff check src tests bench tools
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

test: lint
	$(VENV)/bin/pytest -q -ra tests

bench: deps
	$(PY) bench/cni_latency.py
	$(PY) bench/lab_startup.py
	$(PY) bench/throughput.py
	$(PY) bench/convergence.py
	$(PY) bench/services.py
	$(PY) bench/dns.py
	$(PY) bench/policy.py
	$(PY) bench/bgp.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
