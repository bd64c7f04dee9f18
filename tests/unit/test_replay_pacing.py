"""`recsys.replay.paced` on a fake clock: the schedule holds from the first message, however long that one took."""

from collections.abc import Iterator

import pytest

from recsys import replay


class FakeClock:
    """`time.monotonic` and `time.sleep` as `paced` uses them: sleeping moves the clock, nothing else does."""

    def __init__(self) -> None:
        self.now = 100.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(replay, "time", fake)
    return fake


def slow_start(clock: FakeClock, n: int, first_takes_s: float) -> Iterator[int]:
    """A source whose first message takes `first_takes_s` (the synthetic stream builds its ids first)."""
    clock.now += first_takes_s
    yield from range(n)


def test_a_slow_first_message_is_not_followed_by_a_burst(clock: FakeClock) -> None:
    rate = 1_000.0
    yielded_at = [clock.now for _ in replay.paced(slow_start(clock, 50, first_takes_s=1.0), rate)]
    first = yielded_at[0]
    # Message n leaves n / rate after the first one: the second waits its 1 ms, not sent at once to "catch up".
    assert yielded_at == pytest.approx([first + n / rate for n in range(50)])


def test_a_slow_message_later_is_caught_up(clock: FakeClock) -> None:
    """Behind schedule later on (a slow send), the next messages go out at once until it is kept again."""

    def stalls_at_10() -> Iterator[int]:
        for n in range(20):
            if n == 10:
                clock.now += 0.005  # 5 ms late
            yield n

    yielded_at = [clock.now for _ in replay.paced(stalls_at_10(), 1_000.0)]
    first = yielded_at[0]
    assert yielded_at[10:15] == pytest.approx([first + 0.014] * 5)  # caught up at once...
    assert yielded_at[15:] == pytest.approx([first + n / 1_000 for n in range(15, 20)])  # ...then on schedule
