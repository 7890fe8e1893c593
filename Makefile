# fleet's entry points. `make check` is the test command; .ci/run calls it.
# Debian's python3 runs everything: it sees python3-falcon, -waitress, -systemd.
PY      ?= /usr/bin/python3
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
DEB     := dist/fleet_$(VERSION)_all.deb

.PHONY: help deps build-deps try-deps bench-deps check lint unit e2e pypi deb install try try-stop bench

help:
	@echo "make install   build the .deb and apt-install it (Debian 12 or 13 with systemd, as root)"
	@echo "make check     install test dependencies, then run every test (as root)"
	@echo "make lint      ruff and mypy (strict)"
	@echo "make unit      unit tests only, with Debian's packages"
	@echo "make e2e       end-to-end tests in a throwaway systemd container"
	@echo "make deb       build $(DEB)"
	@echo "make try       boot a throwaway container with fleet installed (no systemd needed here)"
	@echo "make bench     benchmark fleet against its peers (see bench/README.md)"

deps:
	packaging/install-deps

build-deps:
	packaging/install-deps --build

try-deps:
	packaging/install-deps --try

bench-deps:
	packaging/install-deps --bench

check: deps
	$(MAKE) --no-print-directory lint
	$(MAKE) --no-print-directory pypi
	$(PY) -m pytest -p no:cacheprovider tests

lint:
	build/pypi-venv/bin/ruff check fleet harness tests $(wildcard bench)
	build/pypi-venv/bin/mypy fleet

unit:
	$(PY) -m pytest -p no:cacheprovider -m "not e2e" tests

# The same unit tests against the newest falcon, waitress and systemd-python from PyPI.
pypi:
	build/pypi-venv/bin/python -m pytest -p no:cacheprovider -m "not e2e" tests

e2e:
	$(PY) -m pytest -p no:cacheprovider -m e2e tests

deb: $(DEB)
$(DEB): $(shell git ls-files fleet units packaging pyproject.toml 2>/dev/null)
	packaging/build-deb

install: build-deps deb
	apt-get install -y ./$(DEB)

try: try-deps deb
	$(PY) -m harness.try_fleet start

try-stop:
	$(PY) -m harness.try_fleet stop

bench: bench-deps deb
	$(PY) bench/run.py
