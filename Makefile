# strangler — the two commands a new user needs:
#   make demo   start everything (monolith, extracted services, SMTP sink, proxy)
#   make test   run every test
# and `make demo-fleet`: the demo with two proxy replicas sharing a PostgreSQL store.
# Both work on a fresh machine with only Rust and Python 3: this Makefile
# installs the rest (a virtualenv with pinned Python packages; Debian
# packages through apt-get when missing).

SHELL := /bin/bash
VENV := $(CURDIR)/.venv
PY := $(VENV)/bin/python
export TASKAPP_PYTHON := $(PY)
CARGO ?= cargo
# Where cargo puts binaries: honours CARGO_TARGET_DIR (relative or absolute) and .cargo/config.
TARGET_DIR := $(shell $(CARGO) metadata --format-version 1 --no-deps 2>/dev/null | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])' 2>/dev/null || echo $(CURDIR)/target)

.PHONY: demo demo-fleet migrate test test-rust test-python test-k8s test-fuzz lint bench bench-quick soak fuzz report venv build release release-pgo test-pgo clean system-deps postgres prometheus

## Python virtualenv with the monolith's pinned requirements.
venv: $(VENV)/.installed
$(VENV)/.installed: legacy-monolith/requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r legacy-monolith/requirements.txt
	touch $@

build:
	$(CARGO) build --workspace --bins

release:
	$(CARGO) build --release --workspace --bins

## strangler built with profile-guided optimisation (scripts/pgo.sh: an
## instrumented build trained on the benchmark's traffic, then the optimised
## build, then BOLT's reordering from a second training run) into
## <target dir>/pgo/strangler: what `make bench` measures and the container
## image ships.
release-pgo:
	scripts/pgo.sh

## The integration suite on the binary `make bench` measures and the image
## ships (the PGO + BOLT build), not the debug build `make test` uses: BOLT
## rewrites the linked binary, so it is checked as users get it.
test-pgo: venv postgres prometheus release-pgo
	STRANGLER_TEST_BIN=$(TARGET_DIR)/pgo/strangler $(CARGO) test -p strangler --test tests

## Debian packages the tests and the demo use (installed only when missing).
system-deps: postgres prometheus
	@scripts/apt-install.sh curl openssl chromium

## PostgreSQL's server binaries (the fleet store's tests, `make demo-fleet`),
## from Debian's `postgresql` when initdb is missing; Debian keeps them in
## /usr/lib/postgresql/<version>/bin, which scripts/pg-bin.sh finds.
postgres:
	@scripts/pg-bin.sh >/dev/null || scripts/apt-install.sh postgresql

## Debian's Prometheus: the autopilot's fleet tests start one (its gates read
## it); promtool, in the same package, checks the alert rules.
prometheus:
	@test -x /usr/bin/prometheus || scripts/apt-install.sh prometheus

## Every test: fmt + clippy, Rust (unit, integration, end-to-end, short soak,
## hostile input), a short fuzzing run, the monolith's pytest suite, and the
## Kubernetes manifests (rendered, schema-validated, checked by `strangler check`;
## alert rules checked and unit-tested by promtool).
test: venv system-deps
	$(MAKE) lint
	$(MAKE) test-rust
	$(MAKE) test-fuzz
	$(MAKE) test-python
	$(MAKE) test-k8s

test-rust: venv build postgres prometheus
	$(CARGO) test --workspace

## Each fuzz target for 20 s, unoptimized build (quick to build; `make fuzz`
## runs 60 s optimized); fails on a crash.
test-fuzz:
	FUZZ_PROFILE=dev scripts/fuzz.sh 20

test-python: venv
	cd legacy-monolith && $(PY) -m pytest -q

test-k8s: build
	@command -v kubectl >/dev/null || scripts/apt-install.sh kubectl || true
	@# promtool (alert rules' checks and unit tests) comes with Debian's prometheus package.
	@command -v promtool >/dev/null || scripts/apt-install.sh prometheus
	STRANGLER_BIN=$(TARGET_DIR)/debug/strangler bash k8s/validate.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	@# fuzz/ is its own workspace: its lock file must follow the root's dependencies.
	$(CARGO) metadata --locked --format-version 1 --manifest-path fuzz/Cargo.toml > /dev/null

## The whole strangler-fig migration on one machine; Ctrl-C stops everything.
demo: venv release system-deps
	STRANGLER_BIN_DIR=$(TARGET_DIR)/release scripts/demo.sh

## Against a running `make demo`: walk comments from the monolith to the comments service,
## reads through the autopilot (shadow -> 1% -> 50% -> 100%), then the writes, then the legacy
## routes removed; `make migrate ARGS=--rollback` walks back, ARGS=--break deploys a broken
## build of comments and watches the autopilot roll it back by itself.
migrate: venv
	STRANGLER_BIN=$(TARGET_DIR)/release/strangler $(PY) tools/migrate.py $(ARGS)

## The whole demo as a fleet: two proxy replicas on :8080 sharing a PostgreSQL
## store (a server of its own, installed when missing); Ctrl-C stops everything.
demo-fleet: venv release system-deps
	STRANGLER_BIN_DIR=$(TARGET_DIR)/release scripts/demo-fleet.sh

## The shadow-diff report of the demo's traffic (HTML, one self-contained file):
## from the store while `make demo-fleet` runs, else from the diff logs.
report: release
	@if [ -f demo-data/fleet-store ]; then \
	  PGPASSWORD="$$(cat demo-data/fleet-store-password)" $(TARGET_DIR)/release/strangler report \
	    --from "$$(cat demo-data/fleet-store)" --format html -o demo-data/shadow-report.html; \
	else \
	  $(TARGET_DIR)/release/strangler report demo-data/shadow-diffs*.jsonl --format html -o demo-data/shadow-report.html; \
	fi
	@echo "wrote demo-data/shadow-report.html"

## strangler vs nginx vs HAProxy on loopback (installs them): issue 16's targets as
## PASS/FAIL lines, 1 and 2 workers, printed last and written to bench/RESULTS.md
## (~15 min; the whole target ~20 min after the builds). Before it: the criterion
## benchmarks of the route lookup and the report reader, the store reader (1M
## records from PostgreSQL) and the primary's p99 with the store on.
bench: postgres
	$(CARGO) bench -p strangler -p strangler-offline --bench router --bench counting --bench report
	$(CARGO) bench -p strangler-store --bench read
	scripts/bench-store.sh
	scripts/bench.sh

## A smoke run of scripts/bench.sh (every step, short loads, ~3 min): checks the
## harness; its figures are not results and bench/RESULTS.md is left alone.
bench-quick:
	scripts/bench.sh --quick

## Long fault-and-load runs (release build); the short versions are in `make test`.
soak:
	scripts/soak.sh

## Coverage-guided fuzzing of the config loader, path normalizer + router, differ, and both HTTP/1.1 head parsers (60 s each).
fuzz:
	scripts/fuzz.sh 60

clean:
	$(CARGO) clean
	rm -rf $(VENV) .venv-k8s demo-data
