"""The HTTP API: FastAPI routes over the follower's current `ServingModel`.

    python -m serving            # 127.0.0.1:8000; docs at /docs, storefront at /storefront

Every user id in a path or body is the shop's own id: it is pseudonymised on the
way in (an id that already is a pseudonym is taken as it is), so raw ids never
reach Kafka, the tables or a log line. Reads are open; writes and admin endpoints
need the bearer token. Request bodies are capped (RECSYS_SERVING_MAX_BODY_BYTES).

No `from __future__ import annotations` here: FastAPI reads the route signatures at
definition time, and `k`'s limit comes from the settings, inside `_routes`.
"""

import hmac
import importlib.util
import json
import logging
import threading
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path as FsPath
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from kafka.errors import KafkaError
from pydantic import StringConstraints
from threadpoolctl import threadpool_limits

from recsys import erasure
from recsys.contracts.events import Event, validate_event
from recsys.io.kafka import producer
from recsys.privacy import pseudonymise
from recsys.protocol import Topics
from recsys.settings import Settings, get_settings
from serving import metrics, ops
from serving.attribution import Attribution
from serving.batcher import Batcher
from serving.fast import FastRecommend
from serving.follower import ModelFollower
from serving.impressions import ImpressionLog, new_request_id
from serving.model import Ranked, ServingModel, UnknownId
from serving.openapi import install, values
from serving.schemas import (
    ID_PATTERN,
    BatchRecommendations,
    BatchRequest,
    Contribution,
    Error,
    EventAccepted,
    EventIn,
    Explanation,
    ForgetAccepted,
    Health,
    Item,
    ModelInfo,
    Popular,
    Readiness,
    Recommendations,
    Shopper,
    Shoppers,
    Similar,
)

log = logging.getLogger("serving.api")
STATIC = FsPath(__file__).parent / "static"
# Swagger UI's and ReDoc's files as the `fastapi-offline` wheel ships them: the docs pages work without internet.
_OFFLINE = importlib.util.find_spec("fastapi_offline")
assert _OFFLINE is not None and _OFFLINE.origin is not None  # a dependency, installed as files
DOCS_ASSETS = FsPath(_OFFLINE.origin).parent / "static"
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
# The docs pages may load nothing from elsewhere (their inline bootstrap scripts and styles aside).
SAME_ORIGIN_ONLY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; worker-src 'self' blob:; font-src 'self' data:"
)
# Longest `POST /events` waits for this server's earlier impressions before producing an attributed event.
IMPRESSION_FLUSH_S = 1.0
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Error},
    404: {"model": Error},
    422: {"model": Error},
    503: {"model": Error},
}


def app_from_environment() -> FastAPI:
    """The app as each uvicorn worker process builds it (settings from RECSYS_* variables)."""
    return create_app(get_settings())


def create_app(
    settings: Settings | None = None, follower: ModelFollower | None = None, fast_path: bool = True
) -> FastAPI:
    s = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # One BLAS thread per process: a request's product is memory-bound, and BLAS threads fighting
        # over two cores (per request!) cost far more than they give. Scale out with processes instead.
        app.state.blas_limits = threadpool_limits(1)
        app.state.follower = follower or ModelFollower(s)
        app.state.follower.start()
        app.state.producer = None
        app.state.batcher = Batcher()
        app.state.producer_lock = threading.Lock()
        app.state.token = s.write_token()
        app.state.impressions = ImpressionLog(s)
        app.state.impressions.start()
        yield
        app.state.impressions.close()
        app.state.follower.stop()
        if app.state.producer is not None:
            app.state.producer.close(timeout=5)

    app = FastAPI(
        title="recsys-lambda serving layer",
        description="Recommendations from the nightly batch model merged with the speed layer's updates.",
        version="1.0",
        lifespan=lifespan,
        docs_url=None,  # served below from the installed files, not from a CDN
        redoc_url=None,
    )
    app.add_middleware(_BodyLimit, limit=s.serving_max_body_bytes)
    app.add_middleware(_Metrics)
    if fast_path:  # outermost: the hot endpoint skips the framework (serving/fast.py); the rest goes on to FastAPI
        app.add_middleware(FastRecommend, settings=s)
    # Starlette types handlers as taking any Exception, though it calls this one with its own class only.
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.state.settings = s
    _routes(app, s)
    install(app, s, lambda: _served_categories(app))
    return app


def _served_categories(app: FastAPI) -> tuple[set[str], set[str]] | None:
    """The categories the served model accepts (`serving.openapi.document`), None before one is loaded."""
    follower = getattr(app.state, "follower", None)
    model = follower.current if follower is not None else None
    return None if model is None else model.accepted_categories()


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 with readable sentences ("query.k: Input should be less than or equal to 100")."""
    parts = [_in_words(err, request) for err in exc.errors()[:5]]
    return JSONResponse({"detail": "; ".join(dict.fromkeys(parts))}, status_code=422)


CONTROL_WORDS = "must not contain control characters (such as NUL, tab or newline)"


def _in_words(err: dict, request: Request) -> str:
    """One validation error as a sentence an API user can act on (pydantic's own wording where it is one)."""
    loc = [str(p) for p in err.get("loc", ())]
    kind, ctx = err.get("type", ""), err.get("ctx") or {}
    if kind == "json_invalid":
        where = f" at character {loc[1]}" if len(loc) > 1 else ""
        return f"the request body is not valid JSON ({ctx.get('error', 'decode error')}{where})"
    if loc == ["body"] and kind in ("model_attributes_type", "dict_type"):
        content_type = request.headers.get("content-type", "")
        if "json" not in content_type.lower():
            return "send the body as a JSON object with the header 'Content-Type: application/json'" + (
                f" (got {content_type!r})" if content_type else " (none was sent)"
            )
        return "the request body must be a JSON object with the event's fields"
    if kind == "string_pattern_mismatch" and ctx.get("pattern") == ID_PATTERN:  # a repeated parameter's index left out
        return f"{'.'.join(p for p in loc if not p.isdigit())}: {CONTROL_WORDS}"
    message = str(err.get("msg", "invalid"))
    return f"{'.'.join(loc)}: {message.removeprefix('Value error, ')}"


# --- dependencies ------------------------------------------------------------------------------
BearerCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(HTTPBearer(auto_error=False))]


async def current_model(request: Request) -> ServingModel:  # async: no thread-pool hop per request
    model = request.app.state.follower.current
    if model is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "no model loaded yet: see GET /ready")
    return model


def require_token(request: Request, credentials: BearerCredentials) -> None:
    if credentials is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "this endpoint needs 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not hmac.compare_digest(credentials.credentials.encode(), request.app.state.token.encode()):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "wrong token")


Model = Annotated[ServingModel, Depends(current_model)]


def _user(user_id: str, s: Settings, key: bytes) -> str:
    if len(user_id) > s.max_id_length:
        raise HTTPException(422, f"user_id longer than {s.max_id_length} characters")
    return pseudonymise(user_id, key)


def _check_item(item_id: str, s: Settings) -> None:
    if len(item_id) > s.max_id_length:
        raise HTTPException(422, f"item_id longer than {s.max_id_length} characters")


def _check_category(model: ServingModel, category: str | list[str] | None) -> None:
    for name in [category] if isinstance(category, str) else category or []:
        _check_one_category(model, name)


def _check_one_category(model: ServingModel, category: str) -> None:
    if not model.has_category(category):
        known = sorted(model.category_names)
        hint = (
            f"; known: {', '.join(known[:20])}{' ...' if len(known) > 20 else ''}" if known else "; no catalogue loaded"
        )
        raise HTTPException(422, f"unknown category {category!r}{hint}")


def _items(model: ServingModel, ranked: Ranked) -> list[Item]:
    out = []
    reasons = ranked.reasons or [None] * len(ranked.item_ids)
    for item_id, score, fresh, why in zip(ranked.item_ids, ranked.scores, ranked.from_speed, reasons, strict=True):
        title, category = model.item_meta(item_id)
        out.append(Item(item_id=item_id, score=score, title=title, category=category, from_speed=fresh, because=why))
    return out


# --- routes --------------------------------------------------------------------------------------
def _routes(app: FastAPI, s: Settings) -> None:
    # A type alias to mypy (it is built in this body); its limit is the settings'.
    K = Annotated[int, Query(ge=1, le=s.serving_max_k, description=f"How many items (1 to {s.serving_max_k}).")]
    key = s.pseudonym_key_bytes()  # read once: without RECSYS_PSEUDONYM_KEY it comes from a file
    renderer = FastRecommend(None, s)  # its JSON of one answer, for the batch route
    attribution = Attribution(s)

    # Registered before /recommend/{user_id}, which would otherwise also match this path (as user "batch") and
    # answer an OPTIONS here with its own methods.
    @app.post(
        "/recommend/batch",
        response_model=BatchRecommendations,
        responses={**PRIVATE, 400: {"model": Error}},  # 400: a body that is not JSON
        tags=["recommendations"],
        dependencies=[Depends(require_token)],
    )
    async def recommend_batch(body: BatchRequest, model: Model, request: Request) -> Response:
        """`GET /recommend/{user_id}` for many users in one call (e-mails, campaigns): per user, in the request's
        order, exactly the answer the single call gives with the same options, all from one model version;
        scored through the model's batched path (`recommend_many`) in the serving micro-batches. Needs the token:
        it reads many users' personal recommendations at once, and costs as much as that many requests."""
        if len(body.user_ids) > s.serving_max_batch_users:
            raise HTTPException(
                422,
                f"body.user_ids: at most {s.serving_max_batch_users} users per request "
                f"(RECSYS_SERVING_MAX_BATCH_USERS), got {len(body.user_ids)}",
            )
        k = s.serving_default_k if body.k is None else body.k
        if k > s.serving_max_k:
            raise HTTPException(422, f"body.k: Input should be less than or equal to {s.serving_max_k}")
        too_long = next((n for n, u in enumerate(body.user_ids) if len(u) > s.max_id_length), None)
        if too_long is not None:
            raise HTTPException(422, f"body.user_ids[{too_long}] longer than {s.max_id_length} characters")
        _check_category(model, body.category)
        pseudonyms = [pseudonymise(u, key) for u in body.user_ids]
        queries = [model.prepare(p, k, body.exclude_seen, body.category, body.explain) for p in pseudonyms]
        answers = await request.app.state.batcher.submit_many(model, queries)
        request_ids = [new_request_id() for _ in answers]
        shown = request.app.state.impressions.shown
        for rid, p, ranked in zip(request_ids, pseudonyms, answers, strict=True):
            metrics.ANSWERS.labels(ranked.source).inc()
            shown(rid, p, model.version, ranked.item_ids, "batch")
        # Each answer as the single call's bytes (serving/fast.py), joined: building and validating a thousand
        # response models would cost more than ranking the users.
        version = renderer.dumps(model.version).encode()
        results = b",".join(
            renderer.render(model, p, r, rid) for p, r, rid in zip(pseudonyms, answers, request_ids, strict=True)
        )
        return Response(
            b'{"model_version":' + version + b',"results":[' + results + b"]}", media_type="application/json"
        )

    @app.get("/recommend/{user_id}", response_model=Recommendations, responses=ERRORS, tags=["recommendations"])
    async def recommend(
        user_id: UserId,
        model: Model,
        request: Request,
        k: K = s.serving_default_k,
        exclude_seen: bool = True,
        category: Categories = None,
        explain: bool = False,
        exclude: Excluded = None,
        max_per_category: PerCategory = None,
    ) -> Recommendations:
        """Top-k items for a user from the served recommender's view of them: their history and latest events
        including what the speed layer saw since the batch model, else the batch model's view, else the most
        popular items. `exclude_seen` leaves out items the user had the configured event types on
        (RECSYS_SERVING_EXCLUDE_EVENT_TYPES) and items they just viewed or carted (RECSYS_SERVING_RECENT_EXCLUDE_S);
        `category` keeps the items of one or several catalogue categories (any case); `exclude` leaves out the
        caller's item ids; `max_per_category` caps how many items of one category come back; `explain` adds
        "because you viewed X" per item. Items the shop cannot sell (item updates: sold out, hidden) never do."""
        pseudonym = _user(user_id, s, key)
        _check_category(model, category)
        for item in exclude or []:
            _check_item(item, s)
        query = model.prepare(
            pseudonym, k, exclude_seen, category, explain, exclude=exclude or [], max_per_category=max_per_category
        )
        ranked = await request.app.state.batcher.submit(model, query)
        metrics.ANSWERS.labels(ranked.source).inc()
        request_id = new_request_id()
        request.app.state.impressions.shown(request_id, pseudonym, model.version, ranked.item_ids, "recommend")
        return Recommendations(
            request_id=request_id,
            user_id=pseudonym,
            model_version=model.version,
            source=ranked.source,
            as_of_ms=ranked.as_of_ms,
            items=_items(model, ranked),
        )

    @app.get("/similar/{item_id}", response_model=Similar, responses=ERRORS, tags=["recommendations"])
    async def similar(item_id: ItemId, model: Model, k: K = s.serving_default_k) -> Similar:
        """Items like this one by the served model (co-occurrence, factors or attributes); for an item the model
        knows nothing of, the most popular items of its category (`source` says which)."""
        _check_item(item_id, s)
        try:
            ranked = model.similar(item_id, k)
        except UnknownId as e:
            raise HTTPException(404, str(e)) from None
        return Similar(item_id=item_id, model_version=model.version, source=ranked.source, items=_items(model, ranked))

    @app.get("/bought-together/{item_id}", response_model=Similar, responses=ERRORS, tags=["recommendations"])
    async def bought_together(item_id: ItemId, model: Model, k: K = s.serving_default_k) -> Similar:
        """Items shoppers carted or bought in the same session as this one; for an item nobody bought with
        anything, the most popular items of its category (`source` says which)."""
        _check_item(item_id, s)
        try:
            ranked = model.bought_together(item_id, k)
        except UnknownId as e:
            raise HTTPException(404, str(e)) from None
        return Similar(item_id=item_id, model_version=model.version, source=ranked.source, items=_items(model, ranked))

    @app.get("/because/{user_id}/{item_id}", response_model=Explanation, responses=ERRORS, tags=["recommendations"])
    async def because(user_id: UserId, item_id: ItemId, model: Model, k: K = 5) -> Explanation:
        """The user's own items that contribute most to their score of `item_id`."""
        pseudonym = _user(user_id, s, key)
        _check_item(item_id, s)
        try:
            score, shares = model.because(pseudonym, item_id, k)
        except UnknownId as e:
            raise HTTPException(404, str(e)) from None
        because = [Contribution(item_id=i, title=model.item_meta(i)[0], contribution=c) for i, c in shares]
        return Explanation(
            user_id=pseudonym, item_id=item_id, model_version=model.version, score=score, because=because
        )

    @app.get("/popular", response_model=Popular, responses=ERRORS, tags=["recommendations"])
    async def popular(model: Model, k: K = s.serving_default_k, category: Category = None) -> Popular:
        """The items most users interacted with in the batch model's data."""
        _check_category(model, category)
        category = model.canonical_category(category) if category is not None else None
        return Popular(model_version=model.version, category=category, items=_items(model, model.popular(k, category)))

    @app.post(
        "/events",
        status_code=202,
        response_model=EventAccepted,
        responses={401: {"model": Error}, 403: {"model": Error}, 422: {"model": Error}, 503: {"model": Error}},
        tags=["events"],
        dependencies=[Depends(require_token)],
    )
    def post_event(event: EventIn, request: Request) -> EventAccepted:
        """Validate one event, pseudonymise its user id, and produce it to `events`; answers once Kafka has it.
        An event with the `request_id` of an answer is attributed to that list (CTR, conversion: `/ops/attribution`);
        it is produced only once this server's impressions logged before it are (a bounded wait), so an acknowledged
        click never points at a list the impressions log lacks, even if the server is killed right after."""
        body = event.model_dump(exclude_none=True)
        body["user_id"] = _user(event.user_id, s, key)
        body.setdefault("event_id", uuid.uuid4().hex)
        body.setdefault("ts", int(time.time() * 1000))
        raw = json.dumps(body).encode()
        checked = validate_event(raw, s)
        if not isinstance(checked, Event):
            metrics.EVENTS_REJECTED.labels(checked.reason).inc()
            raise HTTPException(422, f"{checked.reason}: {checked.detail}")
        if checked.request_id is not None:
            request.app.state.impressions.flush(timeout_s=IMPRESSION_FLUSH_S)
        try:
            sent = _producer(request, s).send(Topics.EVENTS, key=checked.key(), value=checked.to_wire()).get(timeout=10)
        except KafkaError as e:
            raise HTTPException(503, f"the event log is unavailable, try again: {type(e).__name__}") from None
        metrics.EVENTS_ACCEPTED.inc()
        return EventAccepted(
            event_id=checked.event_id, user_id=checked.user_id, partition=sent.partition, offset=sent.offset
        )

    @app.post(
        "/admin/forget/{user_id}",
        status_code=202,
        response_model=ForgetAccepted,
        responses={401: {"model": Error}, 403: {"model": Error}, 422: {"model": Error}, 503: {"model": Error}},
        tags=["admin"],
        dependencies=[Depends(require_token)],
    )
    def forget(user_id: UserId) -> ForgetAccepted:
        """Erase a user across all layers (right to erasure). Answers once the request is in the event log
        (a FORGET marker on `events`) and the serving layers are told (a FORGET message on `model-updates`).
        Serving never writes the lake: the archiver, on reaching the marker, records the request and erases the
        user from the lake and the model files (the nightly DAG completes whatever it could not)."""
        pseudonym = _user(user_id, s, key)
        try:
            message = erasure.request(pseudonym, s)
        except KafkaError as e:
            raise HTTPException(503, f"the event log is unavailable, try again: {type(e).__name__}") from None
        detail = "speed and serving layers told; the archiver erases the lake and model files"
        return ForgetAccepted(user_id=pseudonym, partition=message.partition, offset=message.offset, detail=detail)

    @app.get(
        "/admin/shoppers",
        response_model=Shoppers,
        tags=["admin"],
        dependencies=[Depends(require_token)],
        responses={401: {"model": Error}, 403: {"model": Error}, 503: {"model": Error}},
    )
    async def shoppers(model: Model, k: K = 20) -> Shoppers:
        """The shoppers with the longest histories in the served model's data, by pseudonym (for the storefront's
        picker and for operators; needs the token: pseudonyms are still personal data)."""
        return Shoppers(
            model_version=model.version, shoppers=[Shopper(user_id=u, events=n) for u, n in model.shoppers(k)]
        )

    @app.get("/models", response_model=ModelInfo, responses=ERRORS, tags=["operations"])
    async def models(model: Model) -> ModelInfo:
        """The model being served, its evaluation, and how much the speed layer has added to it."""
        m = model.manifest
        return ModelInfo(
            model_version=m.model_version,
            engine=m.engine,
            created_at_ms=m.created_at_ms,
            params=m.params,
            n_users=m.n_users,
            n_items=m.n_items,
            new_items=model.n_items - model.n_base,
            speed_users=model.speed_users,
            speed_updates_applied=model.speed_updates,
            index=s.serving_index,
            metrics=m.metrics,
            baseline_metrics=m.baseline_metrics,
            kafka_offsets=m.kafka_offsets,
        )

    @app.get("/ops/registry", tags=["operations"], responses={503: {"model": Error}})
    def ops_registry(request: Request) -> dict:
        """Every model version in the registry (`model_registry` table): its statuses over time (published,
        rejected, not_chosen, evaluated), NDCG@k next to the popularity baseline's, the reason, which is served."""
        current = request.app.state.follower.current
        try:
            return ops.registry(s, current.version if current else None, f"ndcg@{s.eval_k}")
        except Exception as e:  # an unreadable table is the operator's news, not a crash
            log.warning("could not read the model registry: %s", e)
            raise HTTPException(503, f"the model registry could not be read: {type(e).__name__}") from None

    @app.get("/ops/attribution", tags=["operations"], responses={503: {"model": Error}})
    def ops_attribution() -> dict:
        """CTR and conversion per model version and variant, by hour of the answers shown, over the latest
        RECSYS_OPS_ATTRIBUTION_HOURS: the `impressions` table joined with the bronze events that carry an answer's
        `request_id` (serving/attribution.py); recomputed at most every RECSYS_OPS_ATTRIBUTION_CACHE_S."""
        try:
            return attribution.view()
        except Exception as e:  # an unreadable table is the operator's news, not a crash
            log.warning("could not compute the attribution: %s", e)
            raise HTTPException(503, f"the impressions or events table could not be read: {type(e).__name__}") from None

    @app.get("/ops/live", tags=["operations"])
    def ops_live() -> dict:
        """Live figures from Prometheus metrics (this server's and the speed layer's, when
        RECSYS_SPEED_METRICS_PORT is set): lag, event and update counters, dead letters by reason, answers by
        source, update-to-serve delay. Rates come from two readings (the dashboard polls)."""
        return ops.live(s)

    @app.get("/ops/users/{user_id}", tags=["operations"], dependencies=[Depends(require_token)], responses=PRIVATE)
    async def ops_user(user_id: UserId, model: Model, k: K = s.serving_default_k) -> dict:
        """One user: their events since the model's cut-off and in the model's data, and their recommendations
        now with source and explanation (needs the token: this is personal data)."""
        return ops.user_view(model, _user(user_id, s, key), k)

    @app.get("/ops/items/{item_id}", tags=["operations"], responses=ERRORS)
    async def ops_item(item_id: ItemId, model: Model, k: K = s.serving_default_k) -> dict:
        """One item: attributes, similar items, bought together, and how many users touched it, by event type."""
        _check_item(item_id, s)
        try:
            return ops.item_view(model, item_id, k)
        except UnknownId as e:
            raise HTTPException(404, str(e)) from None

    @app.get("/dashboard", include_in_schema=False)
    def dashboard() -> FileResponse:
        return FileResponse(STATIC / "dashboard.html", media_type="text/html")

    @app.get("/health", response_model=Health, tags=["operations"])
    async def health() -> Health:
        """The process is up (it may not have a model yet: see /ready)."""
        return Health()

    @app.get("/ready", response_model=Readiness, responses={503: {"model": Readiness}}, tags=["operations"])
    async def ready(request: Request, response: Response) -> Readiness:
        """Ready once a model is loaded and the updates published before start are applied."""
        follower: ModelFollower = request.app.state.follower
        if not follower.ready:
            response.status_code = 503
        current = follower.current
        return Readiness(
            ready=follower.ready,
            model_version=current.version if current else None,
            caught_up=follower.caught_up.is_set(),
            error=follower.error,
        )

    @app.get("/metrics", tags=["operations"], response_class=Response)
    def prometheus() -> Response:
        """Prometheus metrics."""
        body, media_type = metrics.exposition()
        return Response(body, media_type=media_type)

    # ReDoc's bundle shows a logo from its CDN in the sidebar, unconditionally; ours points it at the favicon.
    redoc_js = (
        (DOCS_ASSETS / "redoc.standalone.js")
        .read_text(encoding="utf-8")
        .replace("https://cdn.redoc.ly/redoc/logo-mini.svg", "/docs-assets/favicon.png")
    )

    @app.get("/docs-assets/redoc.standalone.js", include_in_schema=False)
    def redoc_bundle() -> Response:
        return Response(redoc_js, media_type="text/javascript", headers={"Cache-Control": "max-age=3600"})

    app.mount("/docs-assets", StaticFiles(directory=DOCS_ASSETS), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        assert app.openapi_url is not None  # the default, /openapi.json
        page = get_swagger_ui_html(
            openapi_url=app.openapi_url,
            title=f"{app.title} - API docs",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/docs-assets/favicon.png",
        )
        page.headers["Content-Security-Policy"] = SAME_ORIGIN_ONLY
        return page

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        assert app.openapi_url is not None  # the default, /openapi.json
        page = get_redoc_html(
            openapi_url=app.openapi_url,
            title=f"{app.title} - ReDoc",
            redoc_js_url="/docs-assets/redoc.standalone.js",
            redoc_favicon_url="/docs-assets/favicon.png",
            with_google_fonts=False,
        )
        page.headers["Content-Security-Policy"] = SAME_ORIGIN_ONLY
        return page

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/storefront")

    @app.get("/storefront", include_in_schema=False)
    def storefront() -> FileResponse:
        return FileResponse(STATIC / "storefront.html", media_type="text/html")


def _producer(request: Request, s: Settings):
    state = request.app.state
    with state.producer_lock:
        if state.producer is None:
            state.producer = producer(s, linger_ms=0)
        return state.producer


class _TooLarge(Exception):
    pass


class _BodyLimit:
    """Refuse bodies over `limit` bytes with 413: by Content-Length up front, else while the body streams in."""

    def __init__(self, app, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self._refuse(receive, send)
            return
        received = 0

        async def counted_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise _TooLarge
            return message

        try:
            await self.app(scope, counted_receive, send)
        except _TooLarge:
            await self._refuse(receive, send)

    async def _refuse(self, receive, send) -> None:
        response = JSONResponse({"detail": f"request body larger than {self.limit} bytes"}, status_code=413)
        await response({"type": "http"}, receive, send)


class _Metrics:
    """Counts and times every request by route template (not by raw path: ids would explode the labels)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status_code = 500

        async def send_and_record(message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            metrics.REQUESTS.labels(route, str(status_code)).inc()
            metrics.LATENCY.labels(route).observe(time.perf_counter() - started)
