"""A small HTTP load generator, run in its own process: `python -m bench.loadgen --url ... --paths-file ...`.

Keep-alive HTTP/1.1 GETs over `connections` sockets, written directly on asyncio
streams: a general HTTP client library costs more CPU per request than the server
under test, and on a 2-core machine the generator's own cost is the limit.

- closed loop (`--rate 0`): each connection sends its next request when the last
  answer arrives: measures the most requests per second the server sustains;
- open loop (`--rate R`): requests are due at a fixed total rate; latency runs from
  when a request was *due*, so a server that falls behind is charged for the
  queue it builds (no coordinated omission).

Prints one JSON line: requests, errors, seconds, requests_per_s, latency percentiles in ms.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import typer

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


async def _request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, path: str) -> int:
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    await reader.readexactly(length)
    return status


async def _connection(host, port, paths, deadline, interval, start, latencies, failures, rng) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    due = start + rng.random() * (interval or 0)
    try:
        while True:
            if interval:
                now = time.perf_counter()
                if due > now:
                    await asyncio.sleep(due - now)
            sent_at = due if interval else time.perf_counter()
            if sent_at >= deadline:
                return
            try:
                status = await _request(reader, writer, host, rng.choice(paths))
            except (ConnectionError, asyncio.IncompleteReadError):  # the server closed it: count, reconnect
                status = 0
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
            latencies.append(time.perf_counter() - sent_at)
            if status != 200:
                failures.append(status)
            due += interval or 0
    finally:
        writer.close()


async def _run(
    urls: list[str], paths: list[str], connections: int, seconds: float, rate: float, warmup_s: float
) -> dict:
    servers = [((u := urlsplit(url)).hostname, u.port or 80) for url in urls]
    interval = connections / rate if rate else 0.0
    if warmup_s:
        await _load(servers, paths, connections, warmup_s, interval, [], [])
    latencies: list[float] = []
    failures: list[int] = []
    started = time.perf_counter()
    await _load(servers, paths, connections, seconds, interval, latencies, failures)
    elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {
        "connections": connections,
        "offered_rate": rate or None,
        "requests": len(latencies),
        "errors": len(failures),
        "seconds": round(elapsed, 2),
        "requests_per_s": round(len(latencies) / elapsed, 1),
        "latency_ms": {f"p{q}": round(float(np.percentile(ms, q)), 3) for q in (50, 90, 99, 99.9)} if len(ms) else {},
    }


async def _load(
    servers: Sequence[tuple[str | None, int]], paths, connections, seconds, interval, latencies, failures
) -> None:
    """Connection i goes to servers[i % len(servers)]: a client-side round-robin balancer over replicas."""
    start = time.perf_counter()
    deadline = start + seconds
    rngs = [random.Random(i) for i in range(connections)]
    await asyncio.gather(
        *(
            _connection(*servers[i % len(servers)], paths, deadline, interval, start, latencies, failures, r)
            for i, r in enumerate(rngs)
        )
    )


@app.command()
def main(
    url: str = typer.Option(..., help="Base URL, e.g. http://127.0.0.1:8000; several, comma-separated, are replicas."),
    paths_file: str = typer.Option(..., help="One request path per line; each request picks one at random."),
    connections: int = typer.Option(8),
    seconds: float = typer.Option(10.0),
    rate: float = typer.Option(0.0, help="Requests per second in total; 0 = closed loop (as fast as answered)."),
    warmup: float = typer.Option(2.0, help="Seconds of load before measuring."),
) -> None:
    paths = [p for p in Path(paths_file).read_text().splitlines() if p]
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    print(json.dumps(asyncio.run(_run(url.split(","), paths, connections, seconds, rate, warmup))))


if __name__ == "__main__":
    app()
