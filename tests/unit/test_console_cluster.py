"""The cluster page's reading of Patroni's answers (the page itself runs against a real cluster in
tests/e2e/test_console_browser.py); a failover needs a real one too, so its history entry is read here
in the form Patroni 3.0.2 writes it (patroni/ha.py update_cluster_history)."""

from __future__ import annotations

from datetime import UTC, datetime

from service.console.cluster import ClusterView, Failover, _failover, _member


def test_the_last_history_entry_is_the_last_failover() -> None:
    history = [[1, 50331808, "no recovery target specified", "2026-12-03T18:01:02.123+01:00", "node1"],
               [2, 67109024, "no recovery target specified", "2026-12-03T19:30:00+00:00", "node2"]]
    assert _failover(history) == Failover(timeline=2, at=datetime(2026, 12, 3, 19, 30, tzinfo=UTC),
                                          new_leader="node2", reason="no recovery target specified")
    # Entries written before Patroni kept timestamps have three fields; a fresh cluster has none.
    assert _failover([[1, 50331808, "no recovery target specified"]]) == Failover(1, None, None,
                                                                                  "no recovery target specified")
    assert _failover([]) is None and _failover(None) is None and _failover({"x": 1}) is None


def test_members_and_what_the_page_derives_from_them() -> None:
    view = ClusterView(configured=True, members=[
        _member({"name": "node0", "role": "leader", "state": "running", "host": "127.0.0.1", "port": 55432,
                 "timeline": 3}),
        _member({"name": "node1", "role": "sync_standby", "state": "streaming", "host": "127.0.0.1",
                 "port": 55433, "timeline": 3, "lag": 0}),
        _member({"name": "node2", "role": "replica", "state": "starting", "host": "127.0.0.1", "port": 55434,
                 "lag": "unknown"}),
    ])
    assert view.timeline == 3 and view.synchronous == ["node1"]
    assert [m.lag_bytes for m in view.members] == [None, 0, None] and view.members[2].timeline is None
    assert ClusterView(configured=True).timeline is None
