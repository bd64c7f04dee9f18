"""Micro-batching of /recommend on the event loop: requests that arrive together are scored together.

A request's handler prepares its query and awaits a future; the first one in a
loop iteration schedules a flush for the next iteration, by which time every
request that arrived in the same burst has queued its query too. One matrix
product then scores them all (`ServingModel.answer`). Nothing waits on a timer:
a lone request is answered one loop iteration later, a burst shares the cost of
reading the item matrix.

A bulk request (`POST /recommend/batch`, `submit_many`) queues all its queries at
once, behind the single requests: each flush takes the waiting single requests
first and fills the rest of its MAX_BATCH with bulk queries, so a thousand-user
batch is scored in chunks between the storefront's requests instead of in front
of them.
"""

from __future__ import annotations

import asyncio

from serving import metrics
from serving.model import Query, Ranked, ServingModel

MAX_BATCH = 64

_Entry = tuple[ServingModel, Query, asyncio.Future]


class Batcher:
    def __init__(self) -> None:
        self._pending: list[_Entry] = []  # single requests, first come first scored
        self._bulk: list[_Entry] = []  # bulk requests' queries, scored where a flush has room left
        self._scheduled = False

    def submit(self, model: ServingModel, query: Query) -> asyncio.Future[Ranked]:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((model, query, future))
        self._schedule(loop)
        return future

    async def submit_many(self, model: ServingModel, queries: list[Query]) -> list[Ranked]:
        """The answers to many queries of one model, in their order (scored MAX_BATCH at a time)."""
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in queries]
        self._bulk.extend((model, q, f) for q, f in zip(queries, futures, strict=True))
        self._schedule(loop)
        # Awaited in order, not gathered: a future nobody waits on yet has no callback to schedule when the flush
        # sets it (gather's are one loop callback per query), and a chunk's answers are all there together.
        try:
            return [await future for future in futures]
        except BaseException:  # cancelled (the client went away) or a failed chunk: the rest is not scored
            for future in futures:
                future.cancel()
            raise

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
        room = MAX_BATCH - len(pending)
        pending, self._bulk = pending + self._bulk[:room], self._bulk[room:]
        if self._pending or self._bulk:
            self._schedule(asyncio.get_running_loop())
        # Requests that started before a model swap finish on their model: group by model.
        by_model: dict[int, list[_Entry]] = {}
        for entry in pending:
            if entry[2].done():
                continue  # cancelled: its client went away (a bulk request's other queries go with it)
            by_model.setdefault(id(entry[0]), []).append(entry)
        for entries in by_model.values():
            metrics.BATCH_SIZE.observe(len(entries))
            try:
                answers = entries[0][0].answer([q for _, q, _ in entries])
            except Exception as e:  # one bad batch must not leave requests hanging
                for _, _, future in entries:
                    if not future.done():
                        future.set_exception(e)
                continue
            for (_, _, future), ranked in zip(entries, answers, strict=True):
                if not future.done():  # the client may have gone away
                    future.set_result(ranked)
