"""The API's OpenAPI document, saying what the API accepts and answers rather than what FastAPI assumes.

FastAPI builds the document from the routes' signatures, which cannot know three things:

- a 422 answer is `Error` (`{"detail": "<a sentence>"}`, `api._validation_error`), not FastAPI's
  `HTTPValidationError` (a list of error objects): every reference to the latter is pointed at `Error`;
- which values the settings and the served model allow: a schema marked `values(<kind>)`
  (a route's `Query`/`Path` `json_schema_extra`, or a request model's `Field`) gets them
  filled in here (`filler_table`): event types as an enum, ids their length limit, categories a
  pattern of the served model's categories in any case (what `ServingModel.canonical_category`
  matches);
- that some of these move: the categories with the served model (a nightly swap, items the speed
  layer adds), the latest event time with the clock. The document is rebuilt for each reader, so
  a request it allows is one the API accepts when it is read, and the other way round (an event
  time just past the bound it gives becomes acceptable as the clock moves on).

A new parameter inherits all of this by carrying the same marker (e.g. a list of categories:
`Query(json_schema_extra=values("category"))`: the pattern goes on its items).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic.json_schema import JsonDict

from recsys.contracts.events import ITEM_UPDATES, ts_to_ms
from recsys.settings import Settings

MARK = "x-recsys-values"
VALIDATION_ERROR_REF = "#/components/schemas/HTTPValidationError"
ERROR_REF = "#/components/schemas/Error"

Schema = dict[str, Any]
Filler = Callable[[Schema], None]


def values(kind: str) -> JsonDict:
    """The `json_schema_extra` marking a schema whose allowed values `install`'s document fills in."""
    return {MARK: kind}


def install(app: FastAPI, settings: Settings, categories: Callable[[], tuple[set[str], set[str]] | None]) -> None:
    """Serve `document(...)` as the app's /openapi.json; `categories` gives the served model's (see `document`)."""
    built: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        if "base" not in built:  # the routes' part, once: FastAPI's build is the slow step
            built["base"] = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
        # The rest anew for each reader (a copy and a walk): the categories and the event times' bound move.
        return document(built["base"], settings, categories())

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to supply the document


def document(base: dict[str, Any], settings: Settings, categories: tuple[set[str], set[str]] | None) -> dict:
    """`base` with 422 answers as `Error` and the marked schemas filled in.

    `categories`: (matched in any case, matched exactly) as the served model accepts them; None
    before a model is loaded (every such request answers 503, so the pattern stays the ids' one).
    """
    doc = copy.deepcopy(base)
    _point_validation_errors_at_error(doc)
    fillers = filler_table(settings, categories)
    for node in _marked(doc):
        kind = node.pop(MARK)
        if kind in fillers:
            _apply(node, fillers[kind])
    _describe_parameters_as_their_schemas(doc)
    return doc


def filler_table(settings: Settings, categories: tuple[set[str], set[str]] | None) -> dict[str, Filler]:
    """What each marker kind allows, from the settings and the served model's categories."""
    out: dict[str, Filler] = {
        "event_type": lambda s: s.update(enum=sorted([*settings.event_weights, *ITEM_UPDATES])),
        "id": lambda s: s.update(maxLength=settings.max_id_length),
        "k": lambda s: s.update(maximum=settings.serving_max_k),
        "k_query": lambda s: s.update(k_query_words(settings)),
        "k_query_default": lambda s: s.update(k_query_words(settings), default=settings.serving_default_k),
        "event_time": lambda s: s.update(event_time_bounds(settings, datetime.now(UTC), s.get("type", ""))),
    }
    if categories is not None:
        pattern = category_pattern(*categories)
        out["category"] = lambda s: s.update(pattern=pattern)
    return out


def k_query_words(settings: Settings) -> Schema:
    """A query `k`'s limit, which `serving.dependencies` checks (the parameter's description too: it names it)."""
    return {"maximum": settings.serving_max_k, "description": f"How many items (1 to {settings.serving_max_k})."}


def _describe_parameters_as_their_schemas(doc: dict) -> None:
    """A parameter's description is its schema's, as FastAPI writes both, also where a filler changed the latter."""
    for operation in (op for path in doc.get("paths", {}).values() for op in path.values()):
        for param in operation.get("parameters", []):
            if "description" in param and "description" in param["schema"]:
                param["description"] = param["schema"]["description"]


def category_pattern(any_case: Iterable[str], exact: Iterable[str]) -> str:
    """A pattern matching the first categories in any case (by Python's `str.lower`, as the API matches them)
    and the others as they are; matching nothing when there are none."""
    alternatives = sorted({_any_case(c) for c in any_case} | {"".join(_literal(ch) for ch in c) for c in exact})
    return f"^(?:{'|'.join(alternatives)})$" if alternatives else "^(?!)$"


def _any_case(category: str) -> str:
    parts = []
    for ch in category:
        lowered = ch.lower()
        forms = sorted({f for f in (ch, lowered, ch.upper(), lowered.upper()) if len(f) == 1 and f.lower() == lowered})
        parts.append(_literal(forms[0]) if len(forms) == 1 else "[" + "".join(_literal(f) for f in forms) + "]")
    return "".join(parts)


def _literal(ch: str) -> str:
    """One character as a pattern atom both ECMA-262 (JSON Schema) and Python's `re` read the same way."""
    if ch.isascii() and ch.isalnum():
        return ch
    code = ord(ch)
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\u{{{code:x}}}"  # astral: never in a category we ship


def event_time_bounds(settings: Settings, now: datetime, kind: str) -> Schema:
    """The event times `validate_event` accepts as of `now`, for the integer (epoch ms) or the string form.

    Epoch ms from the first day of RECSYS_MIN_EVENT_YEAR to RECSYS_MAX_FUTURE_SKEW_S after `now` (later the API
    accepts more: the bound moves with the clock). Strings: RFC 3339 date-times of a whole year in the past, so
    whenever the document is read they are accepted (Feb 29 is left out: not every year has one).
    """
    if kind == "integer":
        first = datetime(settings.min_event_year, 1, 1, tzinfo=UTC)
        return {"minimum": ts_to_ms(first), "maximum": ts_to_ms(now) + settings.max_future_skew_s * 1000}
    if kind == "string":
        years = "|".join(str(y) for y in range(settings.min_event_year, now.year))
        day = r"(?:(?:0[1-9]|1[0-2])-(?:0[1-9]|1[0-9]|2[0-8])|(?:0[13-9]|1[0-2])-(?:29|30)|(?:0[13578]|1[02])-31)"
        time = r"T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,6})?(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
        return {"pattern": f"^(?:{years})-{day}{time}$" if years else "^(?!)$"}
    return {}


def _point_validation_errors_at_error(doc: dict) -> None:
    for node in _nodes(doc):
        if node.get("$ref") == VALIDATION_ERROR_REF:
            node["$ref"] = ERROR_REF
    schemas = doc.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)


def _apply(node: Schema, fill: Filler) -> None:
    """Fill the string/integer schemas under `node`: itself, its `anyOf` branches (not null), an array's items."""
    if "anyOf" in node:
        for branch in node["anyOf"]:
            if branch.get("type") != "null":
                _apply(branch, fill)
    elif node.get("type") == "array":
        _apply(node["items"], fill)
    else:
        fill(node)


def _marked(doc: Any) -> list[Schema]:
    return [n for n in _nodes(doc) if MARK in n]


def _nodes(tree: Any) -> Iterable[dict]:
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            yield node
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
