"""tests/scratch.py: the deepest Postgres socket the suite makes fits in a Unix socket path."""

from pathlib import Path

from tests import scratch


def test_a_patroni_nodes_socket_under_a_runs_folder_fits_in_107_bytes() -> None:
    # The Patroni nodes of tests/partitions (<folder>/ha/pg1/run) and of tests/ha (<folder>/cluster/pg1/run).
    run = scratch.BASE / "run-XXXXXXXX"
    deepest = max((run / "booking-ledger-partitions-XXXXXXXX" / "ha", run / "booking-ledger-replink-XXXXXXXX" / "ha",
                   run / "ledger-ha-XXXXXXXX" / "cluster"), key=lambda path: len(str(path)))
    socket = Path(deepest, "pg1", "run", ".s.PGSQL.65535")
    assert len(str(socket).encode()) <= 107, socket
