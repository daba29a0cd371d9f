# erlang_python: one entry point for cargo, rebar3 and pytest.
#   make run    install what is missing, build, run the examples inside a BEAM node
#   make test   install what is missing, build, run every test and lint
# The interpreter to build for: PYTHON= if given, else the one .venv was
# made from (so a `PYTHON=... make build` is remembered), else python3.
PYTHON ?= $(or $(shell sed -n 's/^executable = //p' .venv/pyvenv.cfg 2>/dev/null),python3)
# Resolved to the real file, so that python3 (a shim or a link) and the
# venv's record of it name one interpreter: pyo3 rebuilds when the name
# changes.
export PYO3_PYTHON := $(or $(shell $(PYTHON) -c 'import os, sys; print(os.path.realpath(sys.executable))' 2>/dev/null),$(shell command -v $(PYTHON)))
NIF_SO := erlang/priv/py_nif.so
CLI := bin/erlang-python

.PHONY: all setup build nif erlang run test test-rust test-erlang test-python lint clean wheel-instructions

all: build

setup:
	PYTHON=$(PYTHON) scripts/setup.sh

build: setup nif erlang

nif:
	cargo build --profile nif -p py_nif
	mkdir -p erlang/priv
	cp target/nif/libpy_nif.so $(NIF_SO).tmp && mv $(NIF_SO).tmp $(NIF_SO)

erlang:
	cd erlang && rebar3 compile

run: build
	$(CLI) examples/hello_asyncio.py
	$(CLI) examples/echo_servers.py

test: build lint test-rust test-erlang test-python test-conformance-quick

# Each suite fails on a hang and on an early exit 0 (scripts/run-suite.sh):
# the regex is the summary line it must print.
SUITE := scripts/run-suite.sh

test-rust:
	$(SUITE) 'test result: ok' cargo test --workspace

test-erlang:
	cd erlang && rebar3 eunit && ERLANG_PYTHON_ROOT=$(CURDIR) \
		ERL_FLAGS="+sbwt none +sbwtdcpu none +sbwtdio none" \
		../$(SUITE) 'All [0-9]+ tests passed|Passed [0-9]+ tests' rebar3 ct

test-python:
	$(SUITE) '[0-9]+ passed' $(CLI) -m pytest tests/python -q -p no:cacheprovider

# CPython's test.test_asyncio on ErlangEventLoop (tests/conformance/ lists
# what is excluded and what is known to fail): a fast subset in `make test`,
# all of it here.
test-conformance-quick:
	$(SUITE) '[0-9]+ passed' $(CLI) -m erlang_python_conformance --quick

conformance: build
	$(CLI) -m erlang_python_conformance

# ErlangEventLoop against the stdlib loop, uvloop and rloop (wrk for the ASGI part).
bench: build
	scripts/bench-deps.sh
	$(CLI) examples/benchmark_event_loop.py

# The timer wheel's instructions per operation (callgrind; stable on a noisy
# machine, unlike criterion's times: `cargo bench --bench wheel`).
wheel-instructions: setup
	scripts/wheel-instructions.sh

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	.venv/bin/ruff check python tests examples
	.venv/bin/ruff format --check python tests examples
	cd erlang && rebar3 dialyzer

clean:
	cargo clean
	rm -rf erlang/_build $(NIF_SO)
