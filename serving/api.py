"""The HTTP API: the app factory over the follower's current `ServingModel`.

    python -m serving            # 127.0.0.1:8000; docs at /docs, storefront at /storefront

Every user id in a path or body is the shop's own id: it is pseudonymised on the
way in (an id that already is a pseudonym is taken as it is), so raw ids never
reach Kafka, the tables or a log line. Reads are open; writes and admin endpoints
need the bearer token. Request bodies are capped (RECSYS_SERVING_MAX_BODY_BYTES).

The routes are in `serving.routes` (one router per module), what they take from the app and the request in
`serving.dependencies`, the ASGI middlewares in `serving.middleware` and `serving.fast`. This module builds the
app: its state (which the dependencies read), its middlewares, its routers, its 422 answers and its document.
"""

import threading
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from threadpoolctl import threadpool_limits

from recsys.settings import Settings, get_settings
from serving.attribution import Attribution
from serving.batcher import Batcher
from serving.fast import FastRecommend
from serving.follower import ModelFollower
from serving.impressions import ImpressionLog
from serving.middleware import BodyLimit, RequestMetrics
from serving.openapi import install
from serving.routes import ROUTERS
from serving.routes.pages import DOCS_ASSETS
from serving.schemas import ID_PATTERN


def app_from_environment() -> FastAPI:
    """The app as each uvicorn worker process builds it (settings from RECSYS_* variables)."""
    return create_app(get_settings())


def create_app(
    settings: Settings | None = None, follower: ModelFollower | None = None, fast_path: bool | None = None
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
        docs_url=None,  # served by `serving.routes.pages` from the installed files, not from a CDN
        redoc_url=None,
    )
    app.add_middleware(BodyLimit, limit=s.serving_max_body_bytes)
    app.add_middleware(RequestMetrics)
    # Outermost: the hot endpoint skips the framework (serving/fast.py); the rest goes on to FastAPI.
    if s.serving_fast_path if fast_path is None else fast_path:
        app.add_middleware(FastRecommend, settings=s)
    # Starlette types handlers as taking any Exception, though it calls this one with its own class only.
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.state.settings = s
    app.state.pseudonym_key = s.pseudonym_key_bytes()  # read once: without RECSYS_PSEUDONYM_KEY it comes from a file
    app.state.renderer = FastRecommend(None, s)  # its JSON of one answer, for the batch route
    app.state.attribution = Attribution(s)
    for router in ROUTERS:
        app.include_router(router)
    app.mount("/docs-assets", StaticFiles(directory=DOCS_ASSETS), name="docs-assets")
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
