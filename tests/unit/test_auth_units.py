import time

from service.api.limits import RateLimiter
from service.ledger.keys import DEPARTMENT, parse_scopes


def test_rate_limiter_allows_the_rate_then_refuses_with_a_retry_after() -> None:
    limiter = RateLimiter(rate=5)
    assert [limiter.retry_after("k") for _ in range(5)] == [None] * 5
    wait = limiter.retry_after("k")
    assert wait is not None and wait >= 1
    assert limiter.retry_after("other") is None  # buckets are per key


def test_rate_limiter_refills_over_time() -> None:
    limiter = RateLimiter(rate=50)
    while limiter.retry_after("k") is None:
        pass
    time.sleep(0.05)
    assert limiter.retry_after("k") is None


def test_rate_limit_zero_is_off() -> None:
    limiter = RateLimiter(rate=0)
    assert all(limiter.retry_after("k") is None for _ in range(10_000))


def test_scopes_parse_and_refuse_unknowns() -> None:
    assert parse_scopes("read, write") == ("read", "write")
    assert parse_scopes("write:any") == ("write:any",)
    for bad in ("", "admin", "read,admin"):
        try:
            parse_scopes(bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad!r} accepted")


def test_department_names() -> None:
    assert DEPARTMENT.fullmatch("hotel") and DEPARTMENT.fullmatch("car-rental")
    assert not DEPARTMENT.fullmatch("") and not DEPARTMENT.fullmatch("hotel; drop")
    assert not DEPARTMENT.fullmatch("x\n")
