# The image the compose file builds: the service and its CLI (only what production runs), pinned by
# constraints.txt.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY entrypoints entrypoints
COPY core core
COPY service service
COPY cdc cdc
COPY migrations migrations
RUN pip install --no-cache-dir -c constraints.txt .
USER nobody
EXPOSE 8000
CMD ["booking-ledger", "api"]
