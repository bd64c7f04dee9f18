"""The ASGI middlewares around the API (`serving.api.create_app` adds them): a body size limit and request metrics.

Plain ASGI classes: the size limit has to count a streamed body as it arrives, before the framework reads it.
"""

import time

from fastapi.responses import JSONResponse

from serving import metrics


class TooLarge(Exception):
    pass


class BodyLimit:
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
                raise TooLarge
            return message

        try:
            await self.app(scope, counted_receive, send)
        except TooLarge:
            await self._refuse(receive, send)

    async def _refuse(self, receive, send) -> None:
        response = JSONResponse({"detail": f"request body larger than {self.limit} bytes"}, status_code=413)
        await response({"type": "http"}, receive, send)


class RequestMetrics:
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
