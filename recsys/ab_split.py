"""Which arm of an A/B test a shopper is in: one pure function, used by serving and by the tests' simulation.

A shopper's arm is a stable hash of their pseudonym, salted with the test (the challenger's model version),
read as a number in [0, 1) and compared with the challenger's share. So the same shopper always sees the same
arm for one test, on every replica and after every restart, and a new test (another challenger) draws a new
split: the shoppers who happened to be challengers last time are not the challengers again. blake2b, not
Python's `hash()`, which is salted per process (PYTHONHASHSEED) and would give each replica its own split.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from typing import Literal

Arm = Literal["champion", "challenger"]
CHAMPION: Arm = "champion"
CHALLENGER: Arm = "challenger"
ARMS: tuple[Arm, Arm] = (CHAMPION, CHALLENGER)
_SCALE = float(1 << 64)


def bucket(pseudonym: str, test: str) -> float:
    """The shopper's place in [0, 1) for this test: uniform over shoppers, fixed per (shopper, test)."""
    digest = hashlib.blake2b(pseudonym.encode(), digest_size=8, salt=_salt(test)).digest()
    return int.from_bytes(digest, "big") / _SCALE


def arm(pseudonym: str, challenger_version: str, share: float) -> Arm:
    """The shopper's arm: the challenger for a `share` of shoppers while a test runs (a challenger is named)."""
    if not challenger_version or share <= 0:
        return CHAMPION
    return CHALLENGER if bucket(pseudonym, challenger_version) < share else CHAMPION


@lru_cache(maxsize=64)  # one test at a time: its salt once, not per request
def _salt(test: str) -> bytes:
    # blake2b's salt is at most 16 bytes: the test's own digest, so any test name (a model version) fits.
    return hashlib.blake2b(test.encode(), digest_size=16).digest()
