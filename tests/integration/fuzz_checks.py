"""Schemathesis hooks for `test_fuzz_api.py` (loaded by the CLI through SCHEMATHESIS_HOOKS): one check of our own
on top of all the built-in ones, and one failure it may drop, for a reason it checks."""

from __future__ import annotations

from urllib.parse import urlsplit

import jsonschema
import requests
import schemathesis
from schemathesis.core.failures import AcceptedNegativeData


@schemathesis.check
def readable_reason(ctx, response, case) -> None:
    """Every 4xx says why in a sentence (`{"detail": "..."}`), never a list of dicts, an escaped NUL or a trace."""
    if not 400 <= response.status_code < 500:
        return
    body = response.json()
    detail = body.get("detail") if isinstance(body, dict) else None
    where = f"{response.status_code}: {response.text[:300]}"
    assert isinstance(detail, str) and len(detail.strip()) >= 5, f"no readable detail: {where}"
    assert "\\x00" not in detail and "Traceback" not in detail, f"detail leaks internals: {where}"


@schemathesis.hook
def filter_failure(context, failure, case, response) -> bool:
    """Keep every failure but a body the document calls invalid, accepted, that the document read *now* calls valid.

    The only such bound is an event's latest time (now + RECSYS_MAX_FUTURE_SKEW_S), which moves with the clock:
    a time just past the bound in the document fetched at the start is acceptable a moment later. Anything
    else the API accepts against the document stays a failure (the document read again says the same).
    """
    if not isinstance(failure, AcceptedNegativeData) or not isinstance(case.body, dict):
        return True
    origin = "{0.scheme}://{0.netloc}".format(urlsplit(response.request.url))
    doc = requests.get(f"{origin}/openapi.json", timeout=10).json()
    operation = doc["paths"][case.operation.path][case.method.lower()]
    if operation.get("parameters"):  # the body alone may not be what made the request invalid
        return True
    schema = {**operation["requestBody"]["content"]["application/json"]["schema"], "components": doc["components"]}
    return not jsonschema.Draft202012Validator(schema).is_valid(case.body)
