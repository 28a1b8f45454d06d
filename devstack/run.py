"""`make run`: start the local stack on loopback and the API in the foreground; Ctrl-C stops all."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from devstack.postgres import LocalPostgres

LOCAL = Path(".local")
POSTGRES_PORT = 55432


def main() -> int:
    LOCAL.mkdir(exist_ok=True)
    postgres = None
    if not os.environ.get("LEDGER_DATABASE_URL"):
        postgres = LocalPostgres(LOCAL / "postgres", POSTGRES_PORT)
        print(f"starting Postgres on 127.0.0.1:{POSTGRES_PORT} (data in {postgres.data_dir})", flush=True)
        postgres.start()
    cli = str(Path(sys.executable).with_name("booking-ledger"))
    try:
        subprocess.run([cli, "migrate"], check=True)
        host = os.environ.get("LEDGER_HTTP_HOST", "127.0.0.1")
        port = os.environ.get("LEDGER_HTTP_PORT", "8000")
        print(
            "\nbooking-ledger is starting:\n"
            f"  API       http://{host}:{port}   (OpenAPI: http://{host}:{port}/schema/openapi.json)\n"
            f"  Postgres  {os.environ.get('LEDGER_DATABASE_URL') or postgres.url}\n"  # type: ignore[union-attr]
            "  make a key (in another shell):\n"
            "    .venv/bin/booking-ledger keys create --department hotel\n"
            "  Ctrl-C stops everything.\n",
            flush=True,
        )
        api = subprocess.Popen([cli, "api"])
        signal.signal(signal.SIGTERM, lambda *_: api.send_signal(signal.SIGINT))
        try:
            return api.wait()
        except KeyboardInterrupt:
            api.send_signal(signal.SIGINT)
            try:
                api.wait(timeout=15)
            except subprocess.TimeoutExpired:
                api.kill()
            return 0
    finally:
        # Finish the shutdown even if Ctrl-C is pressed again or stdout has gone (a pipe).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if postgres is not None:
            postgres.stop()
            _say("stopped Postgres")


def _say(text: str) -> None:
    try:
        print(text, flush=True)
    except OSError:
        pass


if __name__ == "__main__":
    sys.exit(main())
