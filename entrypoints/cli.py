"""`booking-ledger`: the one command line of the service."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import asyncpg

from core import roles
from core.pg import connect_primary, is_transient
from core.settings import SettingsError, get_settings
from service.ledger import keys
from service.ledger.errors import LedgerError, StoreUnavailable

T = TypeVar("T")
INTERRUPTED = 130  # the shell's code for a command stopped by SIGINT


class UsageError(Exception):
    """The command was given something it cannot use (exit 2), said in one line."""


def _with_connection(work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    async def run() -> T:
        conn = await connect_primary(get_settings().database.url, timeout=10)
        try:
            return await work(conn)
        finally:
            await conn.close()

    return asyncio.run(run())


def _local_role(command: str) -> None:
    """With LEDGER_DATABASE_URL unset, `command` reaches the local stack as its own role (core/roles.py).

    Set in the environment, so the API's worker processes (started anew by granian) read it too.
    """
    role = roles.BY_COMMAND.get(command)
    if role is not None and role != roles.OWNER and not os.environ.get("LEDGER_DATABASE_URL"):
        os.environ["LEDGER_DATABASE_URL"] = roles.local_url(role)


def _migrate(args: argparse.Namespace) -> int:
    from migrations.runner import downgrade, upgrade, upgrade_script

    url = get_settings().database.migration_url
    if args.sql:
        if args.revision.startswith("-") or args.revision == "base":
            raise SettingsError("--sql writes upgrade scripts only (a range such as 0006:head, or head)")
        print(upgrade_script(args.revision), end="")
    elif args.revision.startswith("-") or args.revision == "base":
        downgrade(url, revision=args.revision)
    else:
        upgrade(url, revision=args.revision, advance_positions=args.advance_positions or args.past is not None,
                advance_past=args.past)
    return 0


def _api(args: argparse.Namespace) -> int:
    from entrypoints.server import serve

    serve()
    return 0


def _logging() -> None:
    from core import logs

    logs.configure()


@contextlib.contextmanager
def _tracing(service: str) -> Iterator[None]:
    """Spans exported while the block runs (when LEDGER_OTLP_ENDPOINT is set), the last ones sent at its end."""
    from core import tracing

    tracing.configure(service, get_settings().tracing.otlp_endpoint)
    try:
        yield
    finally:
        tracing.shutdown()


def _until_signalled(run: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """`run(stop)` in an event loop of its own, where SIGINT or SIGTERM sets `stop`."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run(stop)

    asyncio.run(main())


def _relay(args: argparse.Namespace) -> int:
    from cdc.relay import Relay

    _logging()
    with _tracing("relay"):
        _until_signalled(lambda stop: Relay(get_settings()).run(stop))
    return 0


def _deliver(args: argparse.Namespace) -> int:
    from cdc.deliver import Deliverer

    _logging()
    _until_signalled(lambda stop: Deliverer(get_settings()).run(stop))
    return 0


def _sink(args: argparse.Namespace) -> int:
    from cdc.sink import Sink

    _logging()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with _tracing("sink"):
        Sink(get_settings()).run(stop)
    return 0


def _read_checkpoint(path: Path, field: str) -> tuple[int, object]:
    """(the position under `field`, the DynamoDB table) of a checkpoint file that replay or verify keeps."""
    try:
        kept = json.loads(path.read_text())
        return int(kept[field]), kept.get("table")
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise UsageError(f"cannot read the checkpoint {path}: {error!r}") from None


def _write_checkpoint(path: Path, content: dict) -> None:
    written = path.with_name(path.name + ".new")
    written.write_text(json.dumps(content) + "\n")
    written.replace(path)  # whole or not at all


def _replay(args: argparse.Namespace) -> int:
    from cdc.replay import prune, replay

    table = get_settings().dynamo.table
    after = args.after
    checkpoint = Path(args.checkpoint) if args.checkpoint else None
    if after is None and checkpoint is not None and checkpoint.exists():
        after, kept_table = _read_checkpoint(checkpoint, "replayed_through")
        if kept_table != table:
            raise UsageError(f"the checkpoint {checkpoint} is of DynamoDB table {kept_table!r}, not {table!r}")

    def written_through(position: int) -> None:
        if checkpoint is not None:
            _write_checkpoint(checkpoint, {"replayed_through": position, "table": table})

    if args.prune:
        deleted, highest = asyncio.run(prune(get_settings()))
        print(f"pruned {deleted} items the ledger does not hold from DynamoDB table {table}; "
              f"the highest position it held was {highest}")
    written = asyncio.run(replay(get_settings(), after=after or 0, progress=not args.quiet,
                                 written_through=written_through))
    print(f"replayed {written} events into DynamoDB table {table}" + (f" after position {after}" if after else ""))
    return 0


def _verify(args: argparse.Namespace) -> int:
    from cdc.verify import verify

    since = args.since
    checkpoint = Path(args.checkpoint) if args.checkpoint else None
    if since is None and checkpoint is not None and checkpoint.exists():
        since, _ = _read_checkpoint(checkpoint, "checked_through")
    report = asyncio.run(verify(get_settings(), grace=args.grace, since=since))
    for drift in report.drift[: args.max_lines]:
        print(drift)
    if len(report.drift) > args.max_lines:
        print(f"... and {len(report.drift) - args.max_lines} more (--max-lines)")
    print(report.summary())
    if checkpoint is not None:
        _write_checkpoint(checkpoint, {"checked_through": report.checked_through, "table": get_settings().dynamo.table})
    return 1 if report.drift else 0


def _audit(args: argparse.Namespace) -> int:
    from cdc.audit import audit, trusted_keys

    try:
        keys = trusted_keys(get_settings(), args.public_key)
    except (OSError, ValueError) as error:
        raise UsageError(f"cannot read the checkpoints' public key: {error}") from None
    report = asyncio.run(audit(get_settings(), kafka=not args.no_kafka, dynamodb=not args.no_dynamodb,
                               grace=args.grace, public_keys=keys))
    for mismatch in report.mismatches[: args.max_lines]:
        print(mismatch)
    if len(report.mismatches) > args.max_lines:
        print(f"... and {len(report.mismatches) - args.max_lines} more (--max-lines)")
    for line in report.summary():
        print(line)
    return 1 if report.mismatches else 0


def _checkpoint(args: argparse.Namespace) -> int:
    from core import checkpoints

    key_file = get_settings().audit.checkpoint_key_file
    if not key_file:
        raise UsageError("LEDGER_CHECKPOINT_KEY_FILE names no key file")
    if args.new_key:
        try:
            signer = checkpoints.Signer.create(Path(key_file))
        except FileExistsError:
            raise UsageError(f"{key_file} exists: a key is never overwritten (move it away to rotate)") from None
        print(f"created checkpoint key {signer.key_id} in {key_file} (keep it secret; back it up)")
        print(f"public key (Ed25519, hex): {signer.public_key.hex()}")
        return 0
    try:
        signer = checkpoints.Signer.load(Path(key_file))
    except (OSError, ValueError) as error:
        raise UsageError(f"cannot read the checkpoint key {key_file}: {error}") from None
    made = _with_connection(lambda conn: checkpoints.record(conn, signer))
    for checkpoint in made:
        print(f"checkpoint {checkpoint.seq}: {checkpoint.events} events, positions {checkpoint.after_position} "
              f"(excluded) to {checkpoint.through_position}, root {checkpoint.root}, key {checkpoint.key_id}")
    if not made:
        print("no new events since the last checkpoint")
    return 0


def _import(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from service.ledger.db import create_pool
    from service.ledger.importer import Importer, Summary, read_lines

    path = Path(args.file)
    try:
        with path.open("rb") as file:  # a missing file or a directory is the caller's mistake, not the ledger's
            size = os.fstat(file.fileno()).st_size
    except OSError as error:
        raise UsageError(f"cannot import {path}: {error.strerror or error}") from None
    bar = tqdm(total=size, unit="B", unit_scale=True, desc="import", disable=args.quiet,
               file=sys.stderr)

    def progress(size: int, summary: Summary) -> None:
        bar.update(size + 1)
        if summary.lines % 1000 == 0:
            bar.set_postfix(imported=summary.imported, present=summary.already_present,
                            rejected=summary.rejected_lines, refresh=False)

    async def run() -> Summary:
        pool = await create_pool(get_settings().database)
        try:
            return await Importer(pool).run(read_lines(path), progress)
        finally:
            await pool.close()

    try:
        summary = asyncio.run(run())
    except KeyboardInterrupt:
        bar.close()
        print("booking-ledger: import interrupted: the lines written so far stay written; "
              "import the file again to go on (nothing is written twice)", file=sys.stderr)
        return INTERRUPTED
    finally:
        bar.close()
    print(summary.text())
    return 1 if summary.rejected_lines or summary.held_back else 0


def _keys_create(args: argparse.Namespace) -> int:
    scopes = keys.parse_scopes(args.scopes)
    record, secret = _with_connection(lambda conn: keys.create_key(conn, args.department, scopes))
    print(f"created key {record.id} for department {record.department} with scopes {','.join(scopes)}")
    print("it is shown only this once; store it now:")
    print(secret)
    return 0


def _keys_list(args: argparse.Namespace) -> int:
    for key in _with_connection(keys.list_keys):
        scopes = ",".join(s for s in keys.SCOPES if s in key.scopes)
        revoked = key.revoked_at.isoformat() if key.revoked_at else "-"
        print(f"{key.id}\t{key.department}\t{scopes}\t{key.created_at.isoformat()}\t{revoked}")
    return 0


def _keys_revoke(args: argparse.Namespace) -> int:
    if _with_connection(lambda conn: keys.revoke_key(conn, args.key_id)):
        print(f"revoked key {args.key_id}")
        return 0
    print(f"no active key with id {args.key_id}", file=sys.stderr)
    return 1


Commands = argparse._SubParsersAction  # what add_subparsers returns


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="booking-ledger", description="The booking price ledger.")
    commands = root.add_subparsers(dest="command", required=True)

    migrate = commands.add_parser("migrate", help="bring the Postgres schema to the code's revision")
    migrate.add_argument("revision", nargs="?", default="head", help="target revision (default head; 'base' drops all)")
    migrate.add_argument("--advance-positions", action="store_true",
                         help="after a restore from pg_dump: move new positions past the highest recorded one")
    migrate.add_argument("--past", type=int, default=None, metavar="POSITION",
                         help="after a restore to a moment: move new positions past this one too (the highest "
                              "that Kafka/DynamoDB saw, as `replay --prune` prints it)")
    migrate.add_argument("--sql", action="store_true",
                         help="print the SQL script instead of running it (offline; REVISION may be FROM:TO)")
    migrate.set_defaults(run=_migrate)

    commands.add_parser("api", help="serve the HTTP API in the foreground").set_defaults(run=_api)
    commands.add_parser("relay", help="stream the outbox to Kafka (one leader, others stand by)").set_defaults(
        run=_relay
    )
    commands.add_parser("sink", help="write the Kafka topic into DynamoDB").set_defaults(run=_sink)
    commands.add_parser("deliver", help="deliver the subscriptions' webhooks (one leader, others stand by)"
                        ).set_defaults(run=_deliver)
    _add_read_store_commands(commands)
    load = commands.add_parser("import", help="bring a department's history (JSON Lines) into the ledger; "
                                               "exit 1 when any line was rejected")
    load.add_argument("file", help="one event a line: booking_code, department, event_id, type, "
                                   "price?, data?, occurred_at?")
    load.add_argument("--quiet", action="store_true", help="no progress bar")
    load.set_defaults(run=_import)

    _add_key_commands(commands)
    return root


def _add_read_store_commands(commands: Commands) -> None:
    """replay, verify and audit: the read store (and the topic) against the ledger."""
    replay = commands.add_parser("replay", help="rebuild the DynamoDB read store from the ledger")
    replay.add_argument("--after", type=int, default=None, metavar="POSITION",
                        help="only events with a position above this")
    replay.add_argument("--checkpoint", metavar="FILE", default=None,
                        help="keep here, after each page, the position through which every event is written; a run "
                             "given a FILE that exists starts after it (a replay killed midway goes on where it "
                             "stopped); --after wins when given")
    replay.add_argument("--quiet", action="store_true", help="no progress bar")
    replay.add_argument("--prune", action="store_true",
                        help="first delete DynamoDB items of events the ledger does not hold (after a restore)")
    replay.set_defaults(run=_replay)
    verify = commands.add_parser("verify", help="compare ledger and DynamoDB; exit 1 on drift")
    verify.add_argument("--grace", type=float, default=5.0,
                        help="seconds before drifted bookings are looked at again (events in flight)")
    verify.add_argument("--max-lines", type=int, default=1000, help="print at most this many drift lines")
    verify.add_argument("--since", type=int, default=None, metavar="POSITION",
                        help="check only events above this position (no scan for extra items)")
    verify.add_argument("--checkpoint", metavar="FILE", default=None,
                        help="start after the position this file records (a full run when it is absent) "
                             "and record where the next run starts")
    verify.set_defaults(run=_verify)
    audit = commands.add_parser("audit", help="check the hash chains in the ledger, on Kafka and in DynamoDB; "
                                              "exit 1 on any mismatch")
    audit.add_argument("--grace", type=float, default=5.0,
                       help="seconds before DynamoDB items that differ are looked at again (events in flight)")
    audit.add_argument("--max-lines", type=int, default=1000, help="print at most this many mismatch lines")
    audit.add_argument("--no-kafka", action="store_true", help="leave the Kafka topic out")
    audit.add_argument("--no-dynamodb", action="store_true", help="leave DynamoDB out")
    audit.add_argument("--public-key", action="append", default=[], metavar="HEX",
                       help="a checkpoint key to trust (Ed25519, hex; repeat for rotated keys); default: the public "
                            "half of LEDGER_CHECKPOINT_KEY_FILE when it is readable, else the keys the ledger names")
    audit.set_defaults(run=_audit)
    checkpoint = commands.add_parser("checkpoint", help="record a signed checkpoint over the events since the last "
                                                        "one now (the relay sends it to Kafka)")
    checkpoint.add_argument("--new-key", action="store_true",
                            help="instead, create the key file LEDGER_CHECKPOINT_KEY_FILE names (never overwrites)")
    checkpoint.set_defaults(run=_checkpoint)


def _add_key_commands(commands: Commands) -> None:
    key_commands = commands.add_parser("keys", help="manage API keys").add_subparsers(dest="keys", required=True)
    create = key_commands.add_parser("create", help="create a key; prints it once, alone on the last line")
    create.add_argument("--department", required=True, help="the department the key writes as")
    create.add_argument("--scopes", default=",".join(keys.DEFAULT_SCOPES),
                        help="comma-separated: " + ",".join(keys.SCOPES))
    create.set_defaults(run=_keys_create)
    key_commands.add_parser("list", help="id, department, scopes, created, revoked").set_defaults(run=_keys_list)
    revoke = key_commands.add_parser("revoke", help="revoke a key at once, in every API process")
    revoke.add_argument("key_id")
    revoke.set_defaults(run=_keys_revoke)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    _local_role(args.command)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print("booking-ledger: interrupted", file=sys.stderr)
        return INTERRUPTED
    except (SettingsError, keys.InvalidKeySpec, UsageError) as error:
        print(f"booking-ledger: {error}", file=sys.stderr)
        return 2
    except StoreUnavailable as error:
        print(f"booking-ledger: the ledger database is unavailable: {error} (is Postgres up and migrated?)",
              file=sys.stderr)
        return 1
    except (LedgerError, OSError, asyncpg.PostgresError) as error:
        if is_transient(error):
            print(f"booking-ledger: the ledger database is unavailable: {error!r} (is Postgres up?)",
                  file=sys.stderr)
        else:
            print(f"booking-ledger: ledger database error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
