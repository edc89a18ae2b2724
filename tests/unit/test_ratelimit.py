"""TokenBucket: a socket's event budget, with explicit times (seconds)."""

from __future__ import annotations

import pytest

from iothub.core.ratelimit import TokenBucket


def takes(bucket: TokenBucket, now: float, count: int) -> list[bool]:
    return [bucket.take(now) for _ in range(count)]


def test_a_full_bucket_allows_a_burst_then_refuses() -> None:
    bucket = TokenBucket(rate=2, burst=3, now=0)
    assert takes(bucket, 0, 5) == [True, True, True, False, False]


def test_tokens_come_back_at_the_rate() -> None:
    bucket = TokenBucket(rate=2, burst=3, now=0)
    takes(bucket, 0, 3)
    assert takes(bucket, 0.25, 1) == [False]  # half a token
    assert takes(bucket, 0.5, 2) == [True, False]
    assert takes(bucket, 1.5, 3) == [True, True, False]


def test_refused_events_cost_nothing() -> None:
    bucket = TokenBucket(rate=1, burst=1, now=0)
    assert takes(bucket, 0, 100) == [True] + [False] * 99
    assert bucket.take(1.0)


def test_an_idle_bucket_refills_only_to_the_burst() -> None:
    bucket = TokenBucket(rate=10, burst=4, now=0)
    takes(bucket, 0, 4)
    assert takes(bucket, 3600, 6) == [True] * 4 + [False] * 2


@pytest.mark.parametrize(("rate", "burst"), [(0, 2), (5, 0.5), (0, 0)])
def test_budget_below_one_event_refuses(rate: float, burst: float) -> None:
    """With no rate, the burst is all there ever is; a burst below one allows nothing."""
    bucket = TokenBucket(rate=rate, burst=burst, now=0)
    allowed = int(burst)
    assert takes(bucket, 0, allowed + 1) == [True] * allowed + [False]
    assert bucket.take(1_000) is (rate > 0 and burst >= 1)


def test_steady_traffic_at_the_rate_is_always_allowed() -> None:
    """Eight events a second, one every 1/8 s (exact in binary), never runs dry even with no burst to spare."""
    bucket = TokenBucket(rate=8, burst=1, now=0)
    assert all(bucket.take(i / 8) for i in range(1_000))
    assert not bucket.take(999 / 8)
