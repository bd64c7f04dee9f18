"""Running the speed layer in-process until it has nothing left to do (for tests that check its output)."""

from __future__ import annotations

import time

from recsys.io.kafka import end_offsets
from recsys.protocol import Topics
from speed_layer.service import SpeedLayer


def run_until_idle(s, instance: str = "speed-test", idle_s: float = 3.0, timeout_s: float = 300.0) -> SpeedLayer:
    """Run until idle for `idle_s` AND holding every partition of `events` read to its end as of the call.

    Idle alone is not enough: joining the group (a static member replacing its killed self, a coordinator
    that moved after a broker restart) can take longer than `idle_s`, and a layer that quit before its first
    assignment would leave the crashed run's UPs as the newest.
    """
    ends = end_offsets(Topics.EVENTS, s)
    deadline = time.monotonic() + timeout_s
    layer = SpeedLayer(s, instance)
    try:
        while True:
            layer.run(max_idle_s=idle_s)
            assigned = layer.events.assignment()
            if {tp.partition for tp in assigned} == set(ends) and all(
                layer.events.position(tp) >= ends[tp.partition] for tp in assigned
            ):
                return layer
            if time.monotonic() > deadline:
                raise AssertionError(f"the speed layer did not read `events` to its end in {timeout_s:.0f}s")
    finally:
        layer.close()
