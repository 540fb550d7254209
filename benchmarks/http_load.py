"""A small concurrent HTTP load generator: N keep-alive connections on asyncio streams.

Each connection sends its next request as soon as the previous answer is in (a closed loop), so
``concurrency`` is the number of requests in flight. It speaks just enough HTTP/1.1 (Content-Length
or chunked answers) to cost ~0.1 ms of CPU per request: httpx costs ~1 ms, which on a 2-core
machine would take a core from the server under test. Only for servers on this host.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass
class LoadResult:
    """What one load run measured."""

    concurrency: int
    requests: int
    seconds: float
    latencies_ms: list[float] = field(repr=False)
    statuses: Counter[int]
    failures: int  # connection errors and timeouts (no HTTP status)

    @property
    def errors(self) -> int:
        """Requests that did not get a 200."""
        return self.failures + sum(n for status, n in self.statuses.items() if status != 200)

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")


async def _read_answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length, chunked, close = 0, False, False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
        elif name == b"connection" and b"close" in value.lower():
            close = True
    if chunked:
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            data = await reader.readexactly(size + 2)
            if size == 0:
                break
            parts.append(data[:-2])
        body = b"".join(parts)
    else:
        body = await reader.readexactly(length)
    if close:
        raise ConnectionResetError("server closed the connection")
    return status, body


def _request_bytes(host: str, port: int, path: str, body: bytes, content_type: str) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n"
    )
    return head.encode() + body


async def run_load(
    host: str,
    port: int,
    path: str,
    bodies: Sequence[bytes],
    concurrency: int,
    total: int,
    timeout: float = 60.0,
    content_type: str = "application/json",
) -> LoadResult:
    """Send ``total`` POST requests (bodies in turn) over ``concurrency`` connections."""
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError("the load generator only targets this host")
    requests = [_request_bytes(host, port, path, b, content_type) for b in bodies]
    order = itertools.cycle(range(len(requests)))
    remaining = total
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    failures = 0

    async def connection() -> None:
        nonlocal remaining, failures
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        while remaining > 0:
            remaining -= 1
            raw = requests[next(order)]
            started = time.perf_counter()
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(host, port)
                assert reader is not None
                writer.write(raw)
                status, _ = await asyncio.wait_for(_read_answer(reader), timeout)
            except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
                failures += 1
                if writer is not None:
                    writer.close()
                reader = writer = None
                continue
            latencies.append((time.perf_counter() - started) * 1000)
            statuses[status] += 1
        if writer is not None:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    return LoadResult(concurrency, total, seconds, latencies, statuses, failures)


def load(
    host: str,
    port: int,
    path: str,
    bodies: Sequence[bytes],
    concurrency: int,
    total: int,
    timeout: float = 60.0,
) -> LoadResult:
    """:func:`run_load` from synchronous code."""
    return asyncio.run(run_load(host, port, path, bodies, concurrency, total, timeout))


def process_tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and all its descendants (Linux /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total, pending, seen = 0.0, [pid], set()
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        try:
            with open(f"/proc/{current}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as children:
                    pending.extend(int(c) for c in children.read().split())
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
    return total
