"""Micro-batching of /recommend on the event loop: requests that arrive together are scored together.

A request's handler prepares its query and awaits a future; the first one in a
loop iteration schedules a flush for the next iteration, by which time every
request that arrived in the same burst has queued its query too. One matrix
product then scores them all (`ServingModel.answer`). Nothing waits on a timer:
a lone request is answered one loop iteration later, a burst shares the cost of
reading the item matrix.
"""

from __future__ import annotations

import asyncio

from serving import metrics
from serving.model import Query, Ranked, ServingModel

MAX_BATCH = 64


class Batcher:
    def __init__(self) -> None:
        self._pending: list[tuple[ServingModel, Query, asyncio.Future]] = []

    def submit(self, model: ServingModel, query: Query) -> asyncio.Future[Ranked]:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)
        self._pending.append((model, query, future))
        return future

    def _flush(self) -> None:
        pending, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
        if self._pending:
            asyncio.get_running_loop().call_soon(self._flush)
        # Requests that started before a model swap finish on their model: group by model.
        by_model: dict[int, list[tuple[ServingModel, Query, asyncio.Future]]] = {}
        for entry in pending:
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
