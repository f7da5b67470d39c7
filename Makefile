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
# libasan8 and libubsan1 run the log scanner's sanitizer test; logrotate the rotation tests;
# debhelper, dh-python and pybuild's pyproject plugin build the .deb, whose dependencies are
# Debian's own python3-* packages. Cacti (with MariaDB and PHP's command line) is where the
# Cacti templates are imported; npm (the machine's own, else Debian's) fetches the SMIv2 base
# MIBs (see mibs).
APT_PACKAGES := postfix libsnmp-dev librrd-dev rrdtool snmpd snmp smitools \
	cacti mariadb-server php-cli \
	prometheus prometheus-alertmanager prometheus-postfix-exporter mtail pflogsumm \
	redis-server haproxy python3-venv python3-dev gcc libasan8 libubsan1 make procps \
	time systemd-journal-remote openssl logrotate postfix-cdb postfix-lmdb \
	debhelper dh-python pybuild-plugin-pyproject python3-all-dev python3-setuptools \
	python3-psutil python3-prometheus-client python3-yaml python3-bcrypt adduser

.PHONY: deps mibs venv demo test lint lab-up lab-down clean deb stop-exporter-service

# The SMIv2 base modules MAILPULSE-MIB imports, for smilint and snmptranslate: Debian has them
# only through the non-free snmp-mibs-downloader, which fetches them from outside at install
# time; the net-snmp npm package carries them as plain files.
MIB_DIR ?= /usr/local/share/mailpulse/mibs
BASE_MIBS := SNMPv2-SMI SNMPv2-TC SNMPv2-CONF

mibs: $(MIB_DIR)/SNMPv2-CONF.txt

$(MIB_DIR)/SNMPv2-CONF.txt:
	@command -v npm >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null
	@tmp=$$(mktemp -d) && cd $$tmp && npm pack -q net-snmp@3 >/dev/null \
		&& tar xzf net-snmp-*.tgz package/lib/mibs && mkdir -p $(MIB_DIR) \
		&& for m in $(BASE_MIBS); do cp package/lib/mibs/$$m.mib $(MIB_DIR)/$$m.txt; done; \
		rc=$$?; rm -rf $$tmp; exit $$rc

# Idempotent: only calls apt-get when a package is missing.
deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null \
		| grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections; \
		echo "cacti cacti/dbconfig-install boolean false" | debconf-set-selections; \
		echo "cacti cacti/webserver select None" | debconf-set-selections; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null || exit 1; \
		case " $$missing " in *" prometheus-postfix-exporter "*) $(MAKE) -s stop-exporter-service;; esac; \
	fi
	@$(MAKE) -s --no-print-directory mibs

# Debian's prometheus-postfix-exporter starts as a service on 9154, the agent's port; the
# benchmarks run it as their own process. Installed here, its service is stopped and disabled
# (an exporter the operator installed is left alone: see the README on running both).
stop-exporter-service:
	-if [ -d /run/systemd/system ]; then \
		systemctl disable --now prometheus-postfix-exporter.service >/dev/null 2>&1; \
	elif [ -x /etc/init.d/prometheus-postfix-exporter ]; then \
		/etc/init.d/prometheus-postfix-exporter stop >/dev/null 2>&1; \
		update-rc.d prometheus-postfix-exporter disable >/dev/null 2>&1; \
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

# The .deb, built with Debian's tooling (dh + pybuild, Debian's setuptools) from a copy of the
# tree, so nothing of the venv or an earlier build goes in; it lands in $(DEB_DIR).
DEB_DIR ?= build/deb
deb: deps
	rm -rf $(DEB_DIR) && mkdir -p $(DEB_DIR)/mailpulse
	tar -cf - --exclude=./.git --exclude=./.venv --exclude=./build --exclude='*.egg-info' \
		--exclude='*.so' --exclude=__pycache__ --exclude=.mypy_cache --exclude=.ruff_cache \
		--exclude=.pytest_cache . | tar -xf - -C $(DEB_DIR)/mailpulse
	# Debian's python3, not one earlier on PATH (pyenv, a venv).
	cd $(DEB_DIR)/mailpulse && env PATH=/usr/sbin:/usr/bin:/sbin:/bin \
		dpkg-buildpackage --build=binary --no-sign
	@ls $(DEB_DIR)/*.deb

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy mailpulse collectors exporters bounce lab

clean: lab-down
	rm -rf $(VENV) *.egg-info build
