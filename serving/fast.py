"""The hot endpoint without the framework: `GET /recommend/{user_id}` answered at the ASGI level.

FastAPI's route machinery (dependency resolution, pydantic validation of the query, the
response model's validation and serialisation) costs more per request than ranking the
user (`bench/serving.py`). This wrapper sits outside FastAPI and answers the plain,
valid request itself: the user id and query parameters checked as the route checks
them, the query prepared and put in the same micro-batch as every other request
(`serving.batcher`), the answer written as JSON directly, with its `request_id` and its
impression logged as the route does (`serving.impressions`). Anything else — an
invalid or unusual parameter, an unknown category, no model yet, another method or
path — goes on to the FastAPI app unchanged, which answers it as it always has (its
errors and its OpenAPI documentation stay the single source of truth). The answer's
JSON is the route's, field for field: `tests/unit/test_serving_fast.py` compares them.
"""

from __future__ import annotations

import json
import re
import time
from urllib.parse import parse_qsl

from recsys.privacy import pseudonymise
from recsys.settings import Settings
from serving import metrics
from serving.impressions import new_request_id

PREFIX = "/recommend/"
ROUTE = "/recommend/{user_id}"
PARAMS = frozenset({"k", "exclude_seen", "category", "explain"})
ROUTE_ONLY = frozenset({"exclude", "max_per_category"})  # the business filters: the route answers them
BOOLS = {"true": True, "false": False, "1": True, "0": False}
DIGITS = re.compile(r"[0-9]{1,6}")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
HEADERS = [(b"content-type", b"application/json")]
PLAIN_END = b'false,"because":null}'  # an item neither from the speed layer nor explained


class FastRecommend:
    """ASGI middleware: answers valid `GET /recommend/{user_id}` requests, passes everything else on."""

    def __init__(self, app, settings: Settings) -> None:
        self.app = app
        self.s = settings
        self.key = settings.pseudonym_key_bytes()
        self.ok = metrics.REQUESTS.labels(ROUTE, "200")
        self.answered = metrics.FAST_ANSWERS
        self.latency = metrics.LATENCY.labels(ROUTE)
        self.sources = {s: metrics.ANSWERS.labels(s) for s in ("speed", "batch", "popular", "content")}
        self.dumps = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET" or not scope["path"].startswith(PREFIX):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        state = scope["app"].state  # the FastAPI app (Starlette sets it before its middleware runs)
        follower = getattr(state, "follower", None)
        model = follower.current if follower is not None else None
        args = self.parse(scope) if model is not None else None
        if model is None or args is None:
            await self.app(scope, receive, send)  # FastAPI answers: errors and odd cases keep one definition
            return
        raw_user, k, exclude_seen, category, explain = args
        pseudonym = pseudonymise(raw_user, self.key)
        arm_model, variant = follower.model_for(pseudonym)  # type: ignore[union-attr]  # a model implies a follower
        model = arm_model or model  # the shopper's arm of an A/B test, as the route picks it
        if category is not None:
            category = model.canonical_category(category)
            if category is None:
                await self.app(scope, receive, send)  # unknown category: the route's error
                return
        ranked = await state.batcher.submit(model, model.prepare(pseudonym, k, exclude_seen, category, explain))
        self.sources[ranked.source].inc()
        request_id = new_request_id()
        state.impressions.shown(request_id, pseudonym, model.version, ranked.item_ids, "recommend", variant)
        body = self.render(model, pseudonym, ranked, request_id)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [*HEADERS, (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})
        self.ok.inc()
        self.answered.inc()
        self.latency.observe(time.perf_counter() - started)

    def render(self, model, pseudonym: str, ranked, request_id: str) -> bytes:
        """The route's JSON, joined from each item's pre-built parts (`ServingModel.item_json`) and its score."""
        dumps = self.dumps
        parts = [
            b'{"request_id":"',
            request_id.encode(),  # hex: nothing to escape
            b'","user_id":',
            dumps(pseudonym).encode(),
            b',"model_version":',
            dumps(model.version).encode(),
            b',"source":"',
            ranked.source.encode(),
            b'","as_of_ms":',
            b"null" if ranked.as_of_ms is None else str(int(ranked.as_of_ms)).encode(),
            b',"items":[',
        ]
        reasons = ranked.reasons or [None] * len(ranked.item_ids)
        for n, (item_id, score, fresh, why) in enumerate(
            zip(ranked.item_ids, ranked.scores, ranked.from_speed, reasons, strict=True)
        ):
            head, tail = model.item_json(item_id)
            parts += [
                b"," if n else b"",
                head,
                float.__repr__(float(score)).encode(),
                tail,
                b"true" if fresh else b"false",
                b',"because":',
                b"null" if why is None else dumps(why).encode(),
                b"}",
            ]
        parts.append(b"]}")
        return b"".join(parts)

    def render_many(self, model, pseudonyms: list[str], answers: list, request_ids: list[str]) -> bytes:
        """`render` of each answer, joined by commas (the batch route's results), byte for byte, with the per-item
        work done for the whole batch: every score formatted by one `repr` of the list (the same `float.__repr__`
        per value, the largest cost of writing an answer) and one flat list of parts joined once."""
        dumps = self.dumps
        version = dumps(model.version).encode()
        scores = [score for ranked in answers for score in ranked.scores]
        # repr of a list of floats is ", ".join of each float's repr: nothing else can contain ", ".
        formatted = repr(list(map(float, scores))).encode()[1:-1].split(b", ") if scores else []
        item_parts = model.items_json([item_id for ranked in answers for item_id in ranked.item_ids])
        parts: list[bytes] = []
        n = 0
        for pseudonym, ranked, request_id in zip(pseudonyms, answers, request_ids, strict=True):
            parts += (
                b',{"request_id":"' if parts else b'{"request_id":"',
                request_id.encode(),  # hex: nothing to escape
                b'","user_id":',
                dumps(pseudonym).encode(),
                b',"model_version":',
                version,
                b',"source":"',
                ranked.source.encode(),
                b'","as_of_ms":',
                b"null" if ranked.as_of_ms is None else str(int(ranked.as_of_ms)).encode(),
                b',"items":[',
            )
            reasons = ranked.reasons
            if not len(ranked.scores) == len(ranked.from_speed) == len(ranked.item_ids):  # `render`'s strict zip
                raise ValueError(
                    f"{len(ranked.item_ids)} items but {len(ranked.scores)} scores, {len(ranked.from_speed)} flags"
                )
            for j, fresh in enumerate(ranked.from_speed):
                head, tail = item_parts[n]
                why = None if reasons is None else reasons[j]
                if why is None and not fresh:  # the usual item: one constant ending
                    parts += (b"," if j else b"", head, formatted[n], tail, PLAIN_END)
                else:
                    because = b"null" if why is None else dumps(why).encode()
                    fresh_json = b"true" if fresh else b"false"
                    parts += (b"," if j else b"", head, formatted[n], tail, fresh_json, b',"because":', because, b"}")
                n += 1
            parts.append(b"]}")
        return b"".join(parts)

    def parse(self, scope) -> tuple[str, int, bool, str | None, bool] | None:
        """(user, k, exclude_seen, category, explain) of a request the route would accept as it is; else None."""
        user = scope["path"][len(PREFIX) :]
        if not user or "/" in user or len(user) > self.s.max_id_length or CONTROL.search(user):
            return None
        k, exclude_seen, category, explain = self.s.serving_default_k, True, None, False
        query = scope.get("query_string", b"")
        if query:
            try:
                pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True)
            except ValueError:
                return None
            if len({name for name, _ in pairs}) != len(pairs) or ROUTE_ONLY.intersection(n for n, _ in pairs):
                return None  # a repeated parameter (several categories) or a business filter: the route's
            for name, value in pairs:
                if name == "k":
                    if not DIGITS.fullmatch(value) or not 1 <= int(value) <= self.s.serving_max_k:
                        return None
                    k = int(value)
                elif name == "exclude_seen" or name == "explain":
                    if value not in BOOLS:
                        return None
                    if name == "explain":
                        explain = BOOLS[value]
                    else:
                        exclude_seen = BOOLS[value]
                elif name == "category":
                    if not value:
                        return None
                    category = value
                elif name not in PARAMS:
                    continue  # the route ignores unknown parameters too
        return user, k, exclude_seen, category, explain
