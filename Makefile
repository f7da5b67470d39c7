# mailpulse: set up, demo and test on a Debian 12 machine (as root).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
LAB_DIR ?= /var/tmp/mailpulse-lab
STATE_DIR ?= /var/tmp/mailpulse-state
LAB := $(PY) -m lab --root $(LAB_DIR)

# Real parts the lab, the tests and the benchmarks run: Postfix (with qshape, smtp-sink),
# net-snmp, rrdtool, Prometheus and Alertmanager, Redis, HAProxy, and the tools operators use
# today that the benchmarks compare against. The -dev packages build easysnmp and rrdtool;
# libasan8 and libubsan1 run the log scanner's sanitizer test; logrotate the rotation tests.
APT_PACKAGES := postfix libsnmp-dev librrd-dev rrdtool snmpd snmp smitools \
	prometheus prometheus-alertmanager prometheus-postfix-exporter mtail pflogsumm \
	redis-server haproxy python3-venv python3-dev gcc libasan8 libubsan1 make procps \
	time systemd-journal-remote openssl logrotate postfix-cdb postfix-lmdb

.PHONY: deps venv demo test lint lab-up lab-down clean

# Idempotent: only calls apt-get when a package is missing.
deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null \
		| grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,redis,rrd,lab]'
	touch $@

venv: $(VENV)/.installed

lab-up: deps venv
	$(LAB) up

lab-down:
	-$(PY) -m lab.demo --root $(LAB_DIR) --state-dir $(STATE_DIR) --stop

demo: deps venv
	$(PY) -m lab.demo --root $(LAB_DIR) --state-dir $(STATE_DIR)

test: deps venv
	$(PY) -m pytest -q -rs

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy mailpulse collectors exporters bounce lab

clean: lab-down
	rm -rf $(VENV) *.egg-info
