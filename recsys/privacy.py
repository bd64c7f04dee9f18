"""User-id pseudonymisation: a keyed HMAC, so ids are stable but not reversible without the key.

Every producer the project ships (the replay CLI, the serving layer's POST /events)
pseudonymises before an event reaches Kafka, and consumers reject events whose
user id is not a pseudonym, so raw user ids are never stored anywhere.
"""

from __future__ import annotations

import hashlib
import hmac
import re

from recsys.settings import get_settings

PSEUDONYM_PREFIX = "u_"
# 128 bits of HMAC-SHA256: collisions are negligible below ~10^18 users.
PSEUDONYM_HEX_CHARS = 32
PSEUDONYM_RE = re.compile(rf"^{PSEUDONYM_PREFIX}[0-9a-f]{{{PSEUDONYM_HEX_CHARS}}}$")


def pseudonymise(raw_user_id: str, key: bytes | None = None) -> str:
    """The pseudonym of `raw_user_id`. Idempotent: a pseudonym maps to itself."""
    if is_pseudonym(raw_user_id):
        return raw_user_id
    key = key if key is not None else get_settings().pseudonym_key_bytes()
    digest = hmac.new(key, raw_user_id.encode("utf-8"), hashlib.sha256).hexdigest()
    return PSEUDONYM_PREFIX + digest[:PSEUDONYM_HEX_CHARS]


def is_pseudonym(user_id: str) -> bool:
    return bool(PSEUDONYM_RE.match(user_id))
