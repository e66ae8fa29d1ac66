# sessionfold — `make help` lists the targets.
#
#   make run    nats-server + Valkey (RedisJSON, query engine) into .deps/ if missing, build, serve :8080
#   make check  the fast tier, no servers: rustfmt, clippy, unit and seam tests
#   make test   the same install plus the test-only tools, then every test (what CI runs)
#
# CI builds with --locked: Cargo.lock is what gets built and tested.
#
# RELEASE=1 builds and runs the release profile (slow to build on 2 cores).

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

CARGO ?= cargo
DEPS := $(CURDIR)/.deps

ifeq ($(RELEASE),1)
PROFILE_FLAGS := --release
BIN_DIR := target/release
else
PROFILE_FLAGS :=
BIN_DIR := target/debug
endif

# The servers the integration tests start (the harness falls back to the same
# .deps/ paths); set them in the environment to use other binaries.
SESSIONFOLD_NATS_SERVER ?= $(DEPS)/bin/nats-server
SESSIONFOLD_REDIS_SERVER ?= $(DEPS)/bin/redis-server
SESSIONFOLD_REJSON ?= $(DEPS)/lib/rejson.so

.PHONY: help deps test-deps build run check test check-deploy cluster-test power-test adversary security lint fmt clean

help: ## List the targets
	@echo "usage: make <target>   (RELEASE=1 for the release profile)"
	@awk 'BEGIN {FS = ":.*## "} /^[a-z][a-z-]*:.*## / {printf "  %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

deps: ## Install what running needs: nats-server, Valkey (as redis-server), RedisJSON and the query engine into .deps/ (pinned, idempotent)
	scripts/bootstrap.sh

test-deps: ## deps, and the test-only tools: schemathesis, docker-compose, kubernetes-validate (pinned, idempotent)
	scripts/bootstrap.sh --test-tools

build: ## Build the sessionfold binary (debug; RELEASE=1 for release)
	$(CARGO) build -p sessionfold $(PROFILE_FLAGS)

run: deps build ## Start NATS :14222 and Redis :16379 (or use NATS_URL/REDIS_URL), serve :8080
	SESSIONFOLD_BIN="$(BIN_DIR)/sessionfold" \
	SESSIONFOLD_NATS_SERVER="$(SESSIONFOLD_NATS_SERVER)" \
	SESSIONFOLD_REDIS_SERVER="$(SESSIONFOLD_REDIS_SERVER)" \
	SESSIONFOLD_REJSON="$(SESSIONFOLD_REJSON)" \
		scripts/run-local.sh

check: ## The fast tier, no servers: rustfmt, clippy, every unit test (the seam tests on in-memory fakes among them) and the command line's tests
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	$(CARGO) test --workspace --locked --lib --bins
	$(CARGO) test --locked -p sessionfold --test commands
	$(CARGO) test --locked -p sessionfold-testkit --test helpers

test: test-deps check-deploy ## Every test (unit, integration against real servers incl. the cluster test, doc tests), then make security (the attacks one at a time, latency bounds included); checks compose.yaml and deploy/k8s
	scripts/install-browser.sh
	SESSIONFOLD_NATS_SERVER="$(SESSIONFOLD_NATS_SERVER)" \
	SESSIONFOLD_REDIS_SERVER="$(SESSIONFOLD_REDIS_SERVER)" \
	SESSIONFOLD_REJSON="$(SESSIONFOLD_REJSON)" \
		$(CARGO) test --workspace --locked
	$(MAKE) --no-print-directory sdk-test
	$(MAKE) --no-print-directory security

check-deploy: test-deps ## Validate compose.yaml (docker-compose config) and deploy/k8s (kustomize + Kubernetes schemas)
	scripts/check-deploy.sh

cluster-test: deps ## The cluster test: 3-node NATS (R3 stream) + 3-master Redis Cluster, a NATS node killed under load
	$(CARGO) build -p sessionfold $(PROFILE_FLAGS)
	SESSIONFOLD_BIN="$(CURDIR)/$(BIN_DIR)/sessionfold" \
	SESSIONFOLD_NATS_SERVER="$(SESSIONFOLD_NATS_SERVER)" \
	SESSIONFOLD_REDIS_SERVER="$(SESSIONFOLD_REDIS_SERVER)" \
	SESSIONFOLD_REJSON="$(SESSIONFOLD_REJSON)" \
		$(CARGO) test -p sessionfold-cluster $(PROFILE_FLAGS) -- --nocapture

security: deps ## Replay the hardening attacks (slowloris, label explosion, ping flood, half-sent messages, tokens, session ids, IPv6 rotation, sessions per address and prefix, refused frames holding a socket, a full stream, one stream per tenant; read amplification, unread streams, children pages, SSE joiners, unselective searches, fair caps; finished-session amplification, a full dead-letter stream) against a real ingest, api, nats-server and Redis, one at a time, printing what the attacker got; SECURITY_SCALE=N multiplies their size (make test runs them at 1)
	SESSIONFOLD_NATS_SERVER="$(SESSIONFOLD_NATS_SERVER)" \
		$(CARGO) test -p sessionfold-ingest --test servers security:: -- --nocapture --test-threads=1
	SESSIONFOLD_NATS_SERVER="$(SESSIONFOLD_NATS_SERVER)" \
	SESSIONFOLD_REDIS_SERVER="$(SESSIONFOLD_REDIS_SERVER)" \
	SESSIONFOLD_REJSON="$(SESSIONFOLD_REJSON)" \
		SECURITY_LATENCY_BOUNDS=1 $(CARGO) test -p sessionfold-api --test limits -- --nocapture --test-threads=1
	SESSIONFOLD_NATS_SERVER="$(SESSIONFOLD_NATS_SERVER)" \
	SESSIONFOLD_REDIS_SERVER="$(SESSIONFOLD_REDIS_SERVER)" \
	SESSIONFOLD_REJSON="$(SESSIONFOLD_REJSON)" \
		$(CARGO) test -p sessionfold-processor --test security_finished_amplification --test security_dead_letter_limits -- --nocapture --test-threads=1

power-test: deps ## The power-cut scenarios with POWER_CUTS (default 4) cuts each under a longer load
	$(CARGO) build -p sessionfold $(PROFILE_FLAGS)
	SESSIONFOLD_BIN="$(CURDIR)/$(BIN_DIR)/sessionfold" \
	SESSIONFOLD_NATS_SERVER="$(SESSIONFOLD_NATS_SERVER)" \
	SESSIONFOLD_REDIS_SERVER="$(SESSIONFOLD_REDIS_SERVER)" \
	SESSIONFOLD_REJSON="$(SESSIONFOLD_REJSON)" \
	POWER_CUTS="$${POWER_CUTS:-4}" FAULTS_PACING_MS="$${FAULTS_PACING_MS:-4000}" \
		$(CARGO) test -p sessionfold-faults --test faults $(PROFILE_FLAGS) power_cut -- --nocapture

adversary: deps ## The adversarial-producer model test, bigger: ADVERSARY_SESSIONS (200), ADVERSARY_EVENTS (80 a session), ADVERSARY_SECONDS (60) per seed; ADVERSARY_SEED=<n> replays the random-seed run
	$(CARGO) build -p sessionfold $(PROFILE_FLAGS)
	SESSIONFOLD_BIN="$(CURDIR)/$(BIN_DIR)/sessionfold" \
	SESSIONFOLD_NATS_SERVER="$(SESSIONFOLD_NATS_SERVER)" \
	SESSIONFOLD_REDIS_SERVER="$(SESSIONFOLD_REDIS_SERVER)" \
	SESSIONFOLD_REJSON="$(SESSIONFOLD_REJSON)" \
	ADVERSARY_SESSIONS="$${ADVERSARY_SESSIONS:-200}" ADVERSARY_EVENTS="$${ADVERSARY_EVENTS:-80}" \
	ADVERSARY_SECONDS="$${ADVERSARY_SECONDS:-60}" \
		$(CARGO) test -p sessionfold-faults --test adversary $(PROFILE_FLAGS) -- --nocapture

lint: ## rustfmt check and clippy with warnings as errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

fmt: ## Format the code
	$(CARGO) fmt --all

clean: ## Remove build output and local server data (.data/)
	$(CARGO) clean
	rm -rf .data

# cargo-fuzz needs nightly features; RUSTC_BOOTSTRAP=1 enables them on stable.
# New inputs go to fuzz/target/corpus/ (ignored); fuzz/corpus/ holds the small
# seed corpus and is only read. Crashes land in fuzz/artifacts/ and fail the run.
# Our crates forbid unsafe code, so no sanitizer by default (8x the executions);
# FUZZ_SANITIZER=address adds ASan.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= frame_parse fold_schedule
FUZZ_SANITIZER ?= none

.PHONY: fuzz

fuzz: ## Run each cargo-fuzz target for FUZZ_SECONDS (default 60); installs cargo-fuzz if missing
	@command -v cargo-fuzz >/dev/null 2>&1 || $(CARGO) install cargo-fuzz --locked
	for target in $(FUZZ_TARGETS); do \
		mkdir -p fuzz/target/corpus/$$target; \
		RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run --fuzz-dir fuzz --sanitizer $(FUZZ_SANITIZER) $$target \
			fuzz/target/corpus/$$target fuzz/corpus/$$target \
			-- -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1; \
	done

# The benchmarks (not part of `make test`): a release build, nats-server and
# redis-server on free ports, the services as child processes; prints the
# table and records it in BENCHMARKS.md. The idle-connection run holds 10 000
# sockets on each side, hence the raised `ulimit -n`. BENCH_ARGS go to
# sessionfold-bench (`--help` lists them; `--quick` for a smoke test);
# BENCH_PYTHON, a python3 with matplotlib, also redraws docs/bench-throughput.png.
BENCH_ARGS ?=
BENCH_PYTHON ?= python3

.PHONY: bench

bench: deps ## Benchmarks (release build, own servers; records BENCHMARKS.md)
	$(CARGO) build --release -p sessionfold -p sessionfold-bench
	ulimit -n "$$(ulimit -Hn)"; \
	if [ "$$(ulimit -n)" != unlimited ] && [ "$$(ulimit -n)" -lt 10500 ]; then \
		echo "bench: ulimit -n is $$(ulimit -n); 10 000 idle connections may not fit"; \
	fi; \
	SESSIONFOLD_NATS_SERVER="$(SESSIONFOLD_NATS_SERVER)" \
	SESSIONFOLD_REDIS_SERVER="$(SESSIONFOLD_REDIS_SERVER)" \
	SESSIONFOLD_REJSON="$(SESSIONFOLD_REJSON)" \
		target/release/sessionfold-bench $(BENCH_ARGS)
	@if [[ "$(BENCH_ARGS)" == *--no-record* ]]; then \
		echo "bench: --no-record: docs/bench-throughput.png not redrawn"; \
	elif $(BENCH_PYTHON) -c 'import matplotlib' 2>/dev/null; then \
		$(BENCH_PYTHON) bench/plot.py target/bench/results.json docs/bench-throughput.png; \
	else \
		echo "bench: no matplotlib for $(BENCH_PYTHON); docs/bench-throughput.png not redrawn"; \
	fi
	$(MAKE) --no-print-directory sdk-bench

# The JavaScript producer SDK (clients/js): npm packages from the committed
# package-lock.json, the TypeScript build and browser bundle, then node's test
# runner: the bundle-size budget, the Node tests and the headless Chromium
# test, each against the real system started by sessionfold-stack.
SDK_DIR := clients/js
SDK_ENV = SESSIONFOLD_NATS_SERVER="$(SESSIONFOLD_NATS_SERVER)" \
	SESSIONFOLD_REDIS_SERVER="$(SESSIONFOLD_REDIS_SERVER)" \
	SESSIONFOLD_REJSON="$(SESSIONFOLD_REJSON)"

.PHONY: sdk-build sdk-test sdk-bench

sdk-build: ## Install the SDK's npm packages (npm ci) and build clients/js (types, dist/, browser bundle)
	cd $(SDK_DIR) && npm ci --no-audit --no-fund --loglevel=error && npm run --silent build

sdk-test: deps sdk-build ## The JavaScript SDK's tests: bundle size, Node and headless Chromium against the real system
	scripts/install-browser.sh
	$(CARGO) build --locked -p sessionfold -p sessionfold-stack
	cd $(SDK_DIR) && $(SDK_ENV) SESSIONFOLD_STACK="$(CURDIR)/target/debug/sessionfold-stack" npm test --silent

sdk-bench: deps sdk-build ## One Node client's events/s against the release build, and the bundle size; records BENCHMARKS.md
	$(CARGO) build --release -p sessionfold -p sessionfold-stack
	cd $(SDK_DIR) && $(SDK_ENV) SESSIONFOLD_STACK="$(CURDIR)/target/release/sessionfold-stack" npm run --silent bench
