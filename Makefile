# hammerlock — the two commands: `make run` and `make test`. Everything else is optional.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HAMMERLOCK_DATA_DIR ?= ./var

.PHONY: run test test-long lint format demo tour admin-key bench-ledger bench-audit bench-auctions clean help

help:
	@echo "make run          set up and start hammerlock on http://127.0.0.1:8000 (docs at /docs)"
	@echo "make test         set up, then lint, type-check, check imports and run the test suite"
	@echo "make demo         a marketplace day against the running server, in under a minute (make run first)"
	@echo "make tour         a guided walk through the ledger and card payments (make run first)"
	@echo "make admin-key    print a new admin API key"
	@echo "make test-long    long property and soak runs"
	@echo "make bench-ledger ledger throughput against pgbench in the same run"
	@echo "make bench-audit  audit append rate, outbox cost per transfer, audit verify over 1M events"
	@echo "make bench-auctions bids/s (hot lot, 100 lots), lot settlements/s over HTTP, statements per settlement"

$(STAMP): pyproject.toml constraints.txt
	@test -n "$(PYTHON)" || { echo "Python 3.11+ is required"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/hammerlock serve

admin-key: $(STAMP)
	@$(BIN)/hammerlock keys create --role admin --name "admin ($(USER))" | tail -n 1

demo: $(STAMP)
	$(BIN)/hammerlock demo

tour: $(STAMP)
	$(BIN)/python -m hammerlock.cli.demo

lint: $(STAMP)
	$(BIN)/ruff format --check src tests bench
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

format: $(STAMP)
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

test: lint
	$(BIN)/pytest -n 2 --dist loadgroup -m "not slow"

test-long: $(STAMP)
	HYPOTHESIS_PROFILE=long $(BIN)/pytest -n 2 --dist loadgroup

bench-ledger: $(STAMP)
	$(BIN)/python bench/ledger_bench.py

# Each script measures its baseline in the same run and appends its table to docs/benchmarks.md.
# Needs PostgreSQL on 127.0.0.1:5432 (HAMMERLOCK_BENCH_POSTGRES). Never part of `make test`.
bench-audit: $(STAMP)
	$(BIN)/python bench/audit_append_bench.py --doc
	$(BIN)/python bench/audit_outbox_bench.py --doc
	$(BIN)/python bench/audit_verify_bench.py --doc
	$(BIN)/python bench/audit_verify_bench.py --doc \
		--database-url postgresql+asyncpg://postgres@127.0.0.1:5432/hl_audit_verify_bench
	$(BIN)/python bench/relay_bench.py

# Bids and settlements through a real server beside raw asyncpg inserts (needs wrk, apt), the
# bid group commit without HTTP, and the SQL statements of one settlement, step by step.
bench-auctions: $(STAMP)
	$(BIN)/python bench/auction_bench.py $(BENCH_ARGS)
	$(BIN)/python bench/bid_service_bench.py
	$(BIN)/python bench/settlement_statements.py

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache
