"""Tests of the shared rate limiter, on fake time only."""

from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor

import pytest

from fakes import FakeTime

from runner.http.ratelimit import RateLimiter


def test_first_call_does_not_wait() -> None:
    """The first acquire of a fresh limiter goes at once."""
    fake = FakeTime()
    RateLimiter(5, clock=fake.clock, sleep=fake.sleep).acquire()
    assert fake.sleeps == []


def test_calls_are_spaced_by_the_interval() -> None:
    """Ten calls at 5 per second span 1.8 s of fake time, 0.2 s apart."""
    fake = FakeTime()
    limiter = RateLimiter(5, clock=fake.clock, sleep=fake.sleep)
    times = []
    for _ in range(10):
        limiter.acquire()
        times.append(fake.now)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(gap == pytest.approx(0.2) for gap in gaps)
    assert times[-1] - times[0] == pytest.approx(1.8)


def test_idle_time_is_not_banked_as_a_burst() -> None:
    """After a long pause only one call goes at once; the next waits a full interval."""
    fake = FakeTime()
    limiter = RateLimiter(2, clock=fake.clock, sleep=fake.sleep)
    limiter.acquire()
    fake.now += 60
    limiter.acquire()
    limiter.acquire()
    assert fake.sleeps == [pytest.approx(0.5)]


def test_threads_get_distinct_slots() -> None:
    """Concurrent callers each book their own slot, 0.2 s apart, none shared."""
    fake = FakeTime(frozen=True)  # every thread sees t=0, so its wait is its slot
    limiter = RateLimiter(5, clock=fake.clock, sleep=fake.sleep)
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda _: limiter.acquire(), range(10)))
    assert sorted(fake.sleeps) == pytest.approx([0.2 * i for i in range(1, 10)])


def test_rate_must_be_positive() -> None:
    """A zero rate is refused with the value named."""
    with pytest.raises(ValueError, match="requests_per_second must be > 0, got 0"):
        RateLimiter(0)


def test_a_slot_past_the_deadline_is_refused_unbooked() -> None:
    """acquire(deadline=) says False at once for a slot after the deadline, and books nothing."""
    fake = FakeTime()
    limiter = RateLimiter(1e-9, clock=fake.clock, sleep=fake.sleep)
    assert limiter.acquire(deadline=30.0) is True
    assert limiter.acquire(deadline=30.0) is False
    assert fake.sleeps == []
    fast = RateLimiter(1, clock=fake.clock, sleep=fake.sleep)
    fast.acquire()
    assert fast.reserve(deadline=0.5) is None  # the next slot is at 1.0
    assert fast.reserve(deadline=1.0) == pytest.approx(1.0)  # ... and was not taken by the refusal


def test_slots_before_the_deadline_are_waited_for() -> None:
    """A deadline changes nothing for the slots that come before it."""
    fake = FakeTime()
    limiter = RateLimiter(2, clock=fake.clock, sleep=fake.sleep)
    assert all(limiter.acquire(deadline=10.0) for _ in range(3))
    assert fake.sleeps == [pytest.approx(0.5), pytest.approx(0.5)]
