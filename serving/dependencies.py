"""What the routes take from the app and the request, as typed dependencies (`Annotated[..., Depends(...)]`).

The routers are built once, at import, for every app; what differs between apps (the settings, the pseudonym
key, the served model) is read here from `request.app.state`, which `serving.api.create_app` fills. The same
goes for `k`: its limit is a setting, so it is checked here and filled into the document by `serving.openapi`.
"""

import hmac
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Path, Query, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import StringConstraints

from recsys.privacy import pseudonymise
from recsys.settings import Settings
from serving.model import ServingModel
from serving.openapi import values
from serving.schemas import ID_PATTERN, Error

# Ids in paths: printable, no control characters; the length limit is a setting (checked below, filled into the
# document by `serving.openapi`).
UserId = Annotated[
    str,
    Path(
        min_length=1,
        pattern=ID_PATTERN,
        description="The shop's user id, or its pseudonym.",
        json_schema_extra=values("id"),
    ),
]
ItemId = Annotated[str, Path(min_length=1, pattern=ID_PATTERN, json_schema_extra=values("id"))]
# A category filter: the same characters as ids, so a NUL is refused with words rather than echoed back; the document
# lists the served model's categories (`serving.openapi`).
Category = Annotated[
    str | None,
    Query(
        pattern=ID_PATTERN,
        json_schema_extra=values("category"),
        description="Only items of this catalogue category (any case).",
    ),
]
# /recommend's filters: each may be repeated (`?category=a&category=b`, `?exclude=i1&exclude=i2`); the document
# puts each marker's constraint on the list's items (`serving.openapi`).
Categories = Annotated[
    list[Annotated[str, StringConstraints(pattern=ID_PATTERN)]] | None,
    Query(
        json_schema_extra=values("category"),
        description="Only items of these catalogue categories (any case); repeat it for several.",
    ),
]
Excluded = Annotated[
    list[Annotated[str, StringConstraints(pattern=ID_PATTERN)]] | None,
    Query(
        json_schema_extra=values("id"),
        description="Item ids to leave out (e.g. what the page shows already); repeat it for several.",
    ),
]
PerCategory = Annotated[
    int | None, Query(ge=1, description="At most this many items of one category (items without one are not capped).")
]

PRIVATE: dict[int | str, dict[str, Any]] = {
    401: {"model": Error},
    403: {"model": Error},
    422: {"model": Error},
    503: {"model": Error},
}
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Error},
    404: {"model": Error},
    422: {"model": Error},
    503: {"model": Error},
}


async def app_settings(request: Request) -> Settings:  # async: no thread-pool hop
    return request.app.state.settings


AppSettings = Annotated[Settings, Depends(app_settings)]


async def current_model(request: Request) -> ServingModel:  # async: no thread-pool hop per request
    model = request.app.state.follower.current
    if model is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "no model loaded yet: see GET /ready")
    return model


Model = Annotated[ServingModel, Depends(current_model)]
BearerCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(HTTPBearer(auto_error=False))]


def require_token(request: Request, credentials: BearerCredentials) -> None:
    if credentials is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "this endpoint needs 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not hmac.compare_digest(credentials.credentials.encode(), request.app.state.token.encode()):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "wrong token")


# `k`: at least 1 here, at most RECSYS_SERVING_MAX_K in `_within_limit` (a setting); the document gets the maximum
# and the description's number from `serving.openapi`, and for `KOrSettingsDefault` the settings' default.
KQuery = Annotated[int, Query(ge=1, json_schema_extra=values("k_query"), description="How many items.")]
KOrSettingsDefault = Annotated[
    int, Query(ge=1, json_schema_extra=values("k_query_default"), description="How many items.")
]


async def k_or_settings_default(request: Request, k: KOrSettingsDefault = 1) -> int:
    """`k`, or RECSYS_SERVING_DEFAULT_K when the query has none (so the 1 above is never used)."""
    s = request.app.state.settings
    return _within_limit(s, k) if "k" in request.query_params else s.serving_default_k


def k_or(default: int) -> Callable[[Request, int], Awaitable[int]]:
    """The dependency giving a route's `k`, `default` when the query has none."""

    async def k(request: Request, k: KQuery = default) -> int:
        return _within_limit(request.app.state.settings, k)

    return k


def _within_limit(s: Settings, k: int) -> int:
    if k > s.serving_max_k:  # pydantic's own error, so the 422 reads as any other (`api._validation_error`)
        message = f"Input should be less than or equal to {s.serving_max_k}"
        error = {"type": "less_than_equal", "loc": ("query", "k"), "msg": message, "input": k}
        raise RequestValidationError([{**error, "ctx": {"le": s.serving_max_k}}])
    return k


K = Annotated[int, Depends(k_or_settings_default)]


def pseudonym(request: Request, user_id: str) -> str:
    """The pseudonym of a user id from a path or body (an id longer than the limit is refused with 422)."""
    s = request.app.state.settings
    if len(user_id) > s.max_id_length:
        raise HTTPException(422, f"user_id longer than {s.max_id_length} characters")
    return pseudonymise(user_id, request.app.state.pseudonym_key)


def check_item(item_id: str, s: Settings) -> None:
    if len(item_id) > s.max_id_length:
        raise HTTPException(422, f"item_id longer than {s.max_id_length} characters")


def check_category(model: ServingModel, category: str | list[str] | None) -> None:
    for name in [category] if isinstance(category, str) else category or []:
        _check_one_category(model, name)


def _check_one_category(model: ServingModel, category: str) -> None:
    if not model.has_category(category):
        known = sorted(model.category_names)
        hint = (
            f"; known: {', '.join(known[:20])}{' ...' if len(known) > 20 else ''}" if known else "; no catalogue loaded"
        )
        raise HTTPException(422, f"unknown category {category!r}{hint}")
