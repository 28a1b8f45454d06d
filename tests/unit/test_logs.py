"""Log records in the console format show no raw control, line-break or bidi characters."""

from __future__ import annotations

import logging

import pytest

from core import logs

HOSTILE = "/v1/bookings/\x1b[2J\x1b]0;owned\x07\x00\x7f\u202eevil\u2028x\n2026-01-01T00:00:00Z [info ] fake"
RAW = ("\x1b", "\x07", "\x00", "\x7f", "\u202e", "\u2028")


def test_escape_non_printable() -> None:
    assert logs.escape_non_printable("/v1/bookings/R1/events") == "/v1/bookings/R1/events"
    assert logs.escape_non_printable("é ü 東京") == "é ü 東京"  # printable letters stay as they are
    assert logs.escape_non_printable("a\x1bb\x00c\x7fd\u202ee\n\t\U000e0001") == (
        "a\\x1bb\\x00c\\x7fd\\u202ee\\n\\t\\U000e0001")
    assert logs.escape_non_printable("line\nnext\x1b", keep="\n") == "line\nnext\\x1b"


def written_lines(capfd: pytest.CaptureFixture[str]) -> list[str]:
    return capfd.readouterr().err.splitlines()


@pytest.fixture
def console(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEDGER_LOG_FORMAT", "console")
    # configure() points the root logger at this test's captured stderr by its file descriptor;
    # left in place, later tests' log lines would go to whatever reuses that number (once, a
    # Postgres connection's socket: "invalid frontend message type 50", the "2" of a timestamp).
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", list(root.handlers))
    monkeypatch.setattr(root, "level", root.level)


def test_request_lines_escape_every_field(console: None, capfd: pytest.CaptureFixture[str]) -> None:
    log = logs.direct_logger("booking_ledger.request")
    log.info("request", path=HOSTILE, method="GET\x1b", data={"k": "\u202e"}, **{"odd\x1bkey": 1})
    lines = written_lines(capfd)
    assert len(lines) == 1
    assert not any(char in lines[0] for char in RAW)
    # Shown once escaped (a value with a space is shown as its repr, which escapes it)
    assert "'/v1/bookings/\\x1b[2J\\x1b]0;owned\\x07\\x00\\x7f\\u202eevil\\u2028x\\n2026" in lines[0]
    assert "method=GET\\x1b " in lines[0] and "odd\\x1bkey=1" in lines[0]
    log.info("request\n2026-01-01T00:00:00Z [info ] fake", path="/v1/\x1b[2J\u202e")  # no space: not a repr
    lines = written_lines(capfd)
    assert lines == [lines[0]] and "request\\n2026" in lines[0] and "path=/v1/\\x1b[2J\\u202e" in lines[0]


def test_library_lines_and_tracebacks_escape_too(console: None, capfd: pytest.CaptureFixture[str]) -> None:
    logs.configure()
    log = logging.getLogger("booking_ledger.test")
    log.warning("unhandled error on %s", HOSTILE)
    try:
        raise ValueError(HOSTILE)
    except ValueError:
        log.exception("failed for %s", "\x1b[31mred")
    lines = written_lines(capfd)
    assert not any(char in line for line in lines for char in RAW)
    assert "\\x1b[2J" in lines[0]
    assert any("failed for \\x1b[31mred" in line for line in lines)
    assert any(line.startswith("Traceback") for line in lines)  # a traceback keeps its line breaks
    assert any("ValueError: /v1/bookings/\\x1b[2J" in line for line in lines)
