"""Running the speed layer in-process until it has nothing left to do (for tests that check its output)."""

from __future__ import annotations

from speed_layer.service import SpeedLayer


def run_until_idle(s, instance: str = "speed-test", idle_s: float = 3.0) -> SpeedLayer:
    layer = SpeedLayer(s, instance)
    try:
        layer.run(max_idle_s=idle_s)
    finally:
        layer.close()
    return layer
