# The service image (the API, relay, sink and the CLI): only what production runs, from a wheelhouse
# built on the host, so the build itself needs no network and installs exactly constraints.txt:
#     pip wheel -c constraints.txt -w build/wheelhouse .      (or: make wheelhouse)
#     docker build --build-arg BASE=python:3.11-slim -t booking-ledger:latest .
# BASE is any image with Python 3.11 and its venv module: the official one by default; on the
# development machines, which cannot pull, the local Debian one (devstack/docker.py builds both).
ARG BASE=python:3.11-slim

FROM ${BASE} AS install
COPY constraints.txt /tmp/constraints.txt
COPY build/wheelhouse/ /tmp/wheelhouse/
RUN python3 -m venv /opt/booking-ledger \
 && /opt/booking-ledger/bin/pip install --no-cache-dir --no-index --find-links /tmp/wheelhouse \
        -c /tmp/constraints.txt booking-ledger

FROM ${BASE}
COPY --from=install /opt/booking-ledger /opt/booking-ledger
ENV PATH=/opt/booking-ledger/bin:$PATH PYTHONDONTWRITEBYTECODE=1
WORKDIR /tmp
USER nobody
EXPOSE 8000
CMD ["booking-ledger", "api"]
