"""Soak / load test: concurrent clients on the real service for minutes, while the champion is
swapped back and forth; zero errors expected, memory measured before and after.

``python -m benchmarks.soak --duration 180 --clients 32`` (or ``make soak``) starts the service on
a free port of 127.0.0.1 over a *copy* of the state folder's registry (``--home``, default
``$SYSTEMHEALER_HOME``; without a champion there, it trains a small one into a temporary
folder), so moving the alias never touches the real champion. ``--url`` targets a running
service instead (no swaps, memory only if ``--pid`` is given).

Each client keeps one keep-alive connection and sends its next request as soon as the last
answer is in, picking by weight from a mix of the API and the web page's API:
single incidents, batches, CSV uploads, model info, readiness, the page's status and models
list, and requests that must be refused (a text feature → 400, a mutating call without the
API token → 401). An *error* is a connection failure, a timeout, or any status other than the
one expected — so a 5xx is always an error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.http_load import _read_answer

REPO = Path(__file__).resolve().parents[1]
INCIDENTS_FILE = REPO / "data" / "fault_kpi_unlabelled_2000.csv.gz"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
BOUNDARY = "systemhealer-soak-boundary"


@dataclass(frozen=True)
class Call:
    """One kind of request of the mix."""

    name: str
    method: str
    path: str
    bodies: tuple[bytes, ...]
    content_type: str | None
    expect: int
    weight: float
    authorised: bool = True


@dataclass
class SoakResult:
    """What a soak run measured."""

    seconds: float
    clients: int
    latencies_ms: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    statuses: dict[str, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))
    unexpected: dict[str, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))
    failures: Counter[str] = field(default_factory=Counter)
    versions_seen: Counter[str] = field(default_factory=Counter)
    # (seconds since the start, MB) every 5 s: the service's own processes (those running when
    # the load started: the server and its worker), and all its processes with the short-lived
    # children of jobs (e.g. a GX check in a child process, ~300 MB).
    rss_mb: list[tuple[float, float]] = field(default_factory=list)
    tree_rss_mb: list[tuple[float, float]] = field(default_factory=list)
    swaps: int = 0
    warmup_seconds: float = 60.0

    @property
    def requests(self) -> int:
        return sum(sum(c.values()) for c in self.statuses.values()) + sum(self.failures.values())

    @property
    def errors(self) -> int:
        return sum(sum(c.values()) for c in self.unexpected.values()) + sum(self.failures.values())

    @property
    def server_errors(self) -> int:
        return sum(n for c in self.statuses.values() for s, n in c.items() if s >= 500)

    def percentile(self, q: float, name: str | None = None) -> float:
        values = (
            self.latencies_ms[name]
            if name
            else [v for values in self.latencies_ms.values() for v in values]
        )
        return float(np.percentile(values, q)) if values else float("nan")

    def figures(self) -> dict[str, Any]:
        """JSON-ready figures."""
        rss = [mb for _, mb in self.rss_mb]
        warm = [mb for t, mb in self.rss_mb if t >= self.warmup_seconds]
        last = self.rss_mb[-1][0] if self.rss_mb else 0.0
        # the slope over the last third of the run (at least the last 2 minutes)
        tail = [(t, mb) for t, mb in self.rss_mb if t >= min(last * 2 / 3, last - 120)]
        return {
            "seconds": round(self.seconds, 1),
            "clients": self.clients,
            "requests": self.requests,
            "requests_per_second": round(self.requests / self.seconds, 1) if self.seconds else 0,
            "errors": self.errors,
            "server_errors_5xx": self.server_errors,
            "failures": dict(self.failures),
            "unexpected_statuses": {k: dict(v) for k, v in self.unexpected.items() if v},
            "p50_ms": round(self.percentile(50), 1),
            "p99_ms": round(self.percentile(99), 1),
            "max_ms": round(self.percentile(100), 1),
            "per_call": {
                name: {
                    "requests": sum(self.statuses[name].values()),
                    "p50_ms": round(self.percentile(50, name), 1),
                    "p99_ms": round(self.percentile(99, name), 1),
                    "statuses": dict(self.statuses[name]),
                }
                for name in sorted(self.statuses)
            },
            "model_versions_answering": dict(self.versions_seen),
            "champion_swaps": self.swaps,
            "rss_mb_before": rss[0] if rss else None,
            "warmup_seconds": self.warmup_seconds,
            "rss_mb_after_warmup": warm[0] if warm else None,
            "rss_mb_after": rss[-1] if rss else None,
            "rss_mb_peak": max(rss) if rss else None,
            "rss_slope_mb_per_min_last": slope_mb_per_minute(tail),
            "rss_slope_window_seconds": round(last - tail[0][0]) if tail else None,
            "tree_rss_mb_peak": max((mb for _, mb in self.tree_rss_mb), default=None),
            # every 5 s: growth that levels off is not a leak
            "rss_mb_samples": [(round(t), mb) for t, mb in self.rss_mb],
        }


def process_tree(pid: int) -> list[int]:
    """A process and all its descendants (Linux /proc)."""
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        if current in found:
            continue
        found.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                children = Path(f"/proc/{current}/task/{task}/children").read_text()
                pending.extend(int(c) for c in children.split())
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
    return found


def rss_mb(pids: list[int]) -> float:
    """Resident memory of these processes (those still running), in MB."""
    total_kb = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
    return round(total_kb / 1024, 1)


def process_tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants, in MB (Linux /proc)."""
    return rss_mb(process_tree(pid))


def slope_mb_per_minute(samples: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, MB) samples, in MB per minute."""
    if len(samples) < 3:
        return None
    seconds, mb = np.array(samples).T
    return round(float(np.polyfit(seconds, mb, 1)[0]) * 60, 2)


def _multipart(frame: pd.DataFrame) -> bytes:
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="incidents.csv"'
        "\r\nContent-Type: text/csv\r\n\r\n"
    )
    return head.encode() + frame.to_csv(index=False).encode() + f"\r\n--{BOUNDARY}--\r\n".encode()


def request_mix(frame: pd.DataFrame, token: str | None) -> list[Call]:
    """The weighted mix of requests, built from real incidents."""
    records = json.loads(frame.to_json(orient="records"))
    singles = tuple(json.dumps({"incident": r}).encode() for r in records[:300])
    batches = tuple(
        json.dumps({"incidents": records[i : i + 100]}).encode() for i in range(0, 1000, 100)
    )
    bad = dict(records[0], feature3="not a number")
    calls = [
        Call("predict", "POST", "/predict", singles, "application/json", 200, 50),
        Call("predict_batch", "POST", "/predict_batch", batches, "application/json", 200, 12),
        Call(
            "predict_csv",
            "POST",
            "/predict_csv",
            (_multipart(frame.head(200)),),
            f"multipart/form-data; boundary={BOUNDARY}",
            200,
            3,
        ),
        Call("model_info", "GET", "/model_info", (b"",), None, 200, 10),
        Call("readyz", "GET", "/readyz", (b"",), None, 200, 5),
        Call("ui_status", "GET", "/ui/api/status", (b"",), None, 200, 4),
        Call("ui_models", "GET", "/ui/api/models", (b"",), None, 200, 3),
        Call(
            "bad_incident",
            "POST",
            "/predict",
            (json.dumps({"incident": bad}).encode(),),
            "application/json",
            400,
            5,
        ),
    ]
    if token:
        calls.append(
            Call(
                "rollback_without_token",
                "POST",
                "/ui/api/models/rollback",
                (b"{}",),
                "application/json",
                401,
                3,
                authorised=False,
            )
        )
    return calls


def _raw(call: Call, body: bytes, host: str, port: int, token: str | None) -> bytes:
    lines = [f"{call.method} {call.path} HTTP/1.1", f"Host: {host}:{port}"]
    lines.append("Connection: keep-alive")
    if call.content_type:
        lines.append(f"Content-Type: {call.content_type}")
    if call.method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    if token and call.authorised:
        lines.append(f"Authorization: Bearer {token}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body if call.method == "POST" else b"")


async def _drive(
    host: str,
    port: int,
    calls: list[Call],
    clients: int,
    seconds: float,
    token: str | None,
    result: SoakResult,
    timeout: float,
    seed: int,
) -> None:
    deadline = time.monotonic() + seconds
    weights = [c.weight for c in calls]

    async def client(index: int) -> None:
        rng = random.Random(seed + index)
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        while time.monotonic() < deadline:
            call = rng.choices(calls, weights)[0]
            raw = _raw(call, rng.choice(call.bodies), host, port, token)
            started = time.perf_counter()
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(host, port)
                assert reader is not None
                writer.write(raw)
                status, body = await asyncio.wait_for(_read_answer(reader), timeout)
            except TimeoutError:
                result.failures[f"{call.name}: timeout"] += 1
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                result.failures[f"{call.name}: {type(exc).__name__}"] += 1
            else:
                result.latencies_ms[call.name].append((time.perf_counter() - started) * 1000)
                result.statuses[call.name][status] += 1
                if status != call.expect:
                    result.unexpected[call.name][status] += 1
                elif call.name == "predict":
                    result.versions_seen[json.loads(body)["model_version"]] += 1
                continue
            if writer is not None:
                writer.close()
            reader = writer = None
        if writer is not None:
            writer.close()

    await asyncio.gather(*(client(i) for i in range(clients)))


def run_soak(
    url: str,
    seconds: float,
    clients: int,
    token: str | None = None,
    pid: int | None = None,
    swap: tuple[Any, list[str], float] | None = None,
    frame: pd.DataFrame | None = None,
    timeout: float = 60.0,
    seed: int = 0,
) -> SoakResult:
    """Load the service at ``url`` for ``seconds`` with ``clients`` connections.

    ``pid``: the service's process, for memory; ``swap``: (settings, versions, every_seconds)
    to move the champion alias round the versions meanwhile (the registry of ``settings``).
    """
    host, _, port_text = url.removeprefix("http://").rstrip("/").partition(":")
    if host not in LOCAL_HOSTS:
        raise ValueError("the soak test only targets this host")
    port = int(port_text)
    frame = frame if frame is not None else pd.read_csv(INCIDENTS_FILE)
    calls = request_mix(frame, token)
    result = SoakResult(seconds=0.0, clients=clients)
    stop = threading.Event()

    service_pids: list[int] = []
    measured_from = 0.0

    def record_memory() -> None:
        assert pid is not None
        now = time.monotonic() - measured_from
        result.rss_mb.append((now, rss_mb(service_pids)))
        result.tree_rss_mb.append((now, process_tree_rss_mb(pid)))

    def sample_memory() -> None:
        while not stop.wait(5.0):
            record_memory()

    def swap_champion() -> None:
        from systemhealer import tracking

        settings, versions, every = swap
        position = 0
        while not stop.wait(every):
            position = (position + 1) % len(versions)
            tracking.set_champion(settings, versions[position], record=False)
            result.swaps += 1

    # Warm up (first requests load torch kernels, the web app, GX): not part of the figures.
    asyncio.run(_drive(host, port, calls, 2, 3.0, token, SoakResult(0, 2), timeout, seed + 999))
    threads = []
    if pid is not None:
        service_pids = process_tree(pid)
        measured_from = time.monotonic()
        record_memory()
        threads.append(threading.Thread(target=sample_memory, daemon=True))
    if swap is not None:
        threads.append(threading.Thread(target=swap_champion, daemon=True))
    for thread in threads:
        thread.start()
    started = time.perf_counter()
    try:
        asyncio.run(_drive(host, port, calls, clients, seconds, token, result, timeout, seed))
    finally:
        result.seconds = time.perf_counter() - started
        stop.set()
        for thread in threads:
            thread.join(30)
    if swap is not None:
        settings, versions, _ = swap
        from systemhealer import tracking

        tracking.set_champion(settings, versions[0], record=False)
    if pid is not None:
        time.sleep(2.0)  # let in-flight work settle before the last reading
        record_memory()
    return result


# --- running it by hand or from `make bench` ---


def log(message: str) -> None:
    print(f"[soak] {message}", file=sys.stderr, flush=True)


@contextmanager
def registry_copy(home: Path) -> Iterator[tuple[Any, list[str]]]:
    """A temporary state folder sharing ``home``'s models: its own copy of the registry
    database, with a second registration of the champion to swap to. Yields (settings,
    [champion version, other version])."""
    from systemhealer import tracking
    from systemhealer.config import load_settings

    folder = Path(tempfile.mkdtemp(prefix="systemhealer-soak-"))
    saved = os.environ.get("SYSTEMHEALER_HOME")
    try:
        shutil.copy(home / "mlflow.db", folder / "mlflow.db")
        os.environ["SYSTEMHEALER_HOME"] = str(folder)
        settings = load_settings()
        champion = tracking.champion(settings)
        if champion is None:
            raise SystemExit(f"{home} has no champion")
        # The same model registered once more: a real swap (load, warm up, replace) each time.
        twin = tracking.register(settings, champion.source, {"soak": "twin"})
        yield settings, [champion.version, twin.version]
    finally:
        if saved is None:
            os.environ.pop("SYSTEMHEALER_HOME", None)
        else:
            os.environ["SYSTEMHEALER_HOME"] = saved
        shutil.rmtree(folder, ignore_errors=True)


def run(
    home: Path | None = None,
    results_dir: Path | None = None,
    seconds: float = 120.0,
    clients: int = 32,
    swap_every: float = 20.0,
    token: str = "soak-token",
) -> dict[str, Any]:
    """The soak benchmark on ``home``'s champion (None: train a small one first)."""
    from benchmarks.serving import state_folder
    from systemhealer.serve import free_port, start_service, stop_service, wait_ready

    with state_folder(home) as state, registry_copy(state) as (settings, versions):
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log_file = settings.home / "service.log"
        env = {
            "SYSTEMHEALER_SERVING__API_TOKEN": token,
            "SYSTEMHEALER_SERVING__MODEL_POLL_SECONDS": "2",
        }
        with log_file.open("wb") as sink:
            process = start_service(settings, "127.0.0.1", port, log=sink, extra_env=env)
            try:
                wait_ready(url, process, timeout=180)
                log(
                    f"{clients} clients for {seconds:.0f} s, champion swapped every {swap_every:g} s"
                )
                result = run_soak(
                    url,
                    seconds,
                    clients,
                    token=token,
                    pid=process.pid,
                    swap=(settings, versions, swap_every),
                )
            finally:
                stop_service(process)
        tracebacks = log_file.read_text(errors="replace").count("Traceback")
    figures = result.figures() | {
        "service_log_tracebacks": tracebacks,
        "machine": {"cpus": os.cpu_count(), "load_average_1m_at_end": os.getloadavg()[0]},
    }
    if results_dir is not None:
        results_dir.mkdir(parents=True, exist_ok=True)
        (results_dir / "soak.json").write_text(json.dumps(figures, indent=2))
        (results_dir / "soak.md").write_text(table(figures) + "\n")
    return figures


def table(figures: dict[str, Any]) -> str:
    """The soak table, as Markdown."""
    lines = [
        f"{figures['clients']} clients for {figures['seconds']:.0f} s: "
        f"{figures['requests']:,} requests ({figures['requests_per_second']:.0f}/s), "
        f"**{figures['errors']} errors** ({figures['server_errors_5xx']} 5xx), "
        f"p50 {figures['p50_ms']} ms, p99 {figures['p99_ms']} ms, max {figures['max_ms']} ms; "
        f"{figures['champion_swaps']} champion swaps, answers by versions "
        f"{figures['model_versions_answering']}",
        "",
        f"Service memory (server + worker): {figures['rss_mb_before']} MB before, "
        f"{figures['rss_mb_after_warmup']} MB after {figures['warmup_seconds']:.0f} s of warm-up, "
        f"{figures['rss_mb_after']} MB at the end (peak {figures['rss_mb_peak']} MB); slope "
        f"{figures['rss_slope_mb_per_min_last']} MB/min over the last "
        f"{figures['rss_slope_window_seconds']} s. With the short-lived child processes of jobs "
        f"if any: peak {figures['tree_rss_mb_peak']} MB.",
        "",
        "| call | requests | p50 ms | p99 ms | statuses |",
        "|---|---|---|---|---|",
    ]
    for name, call in figures["per_call"].items():
        lines.append(
            f"| {name} | {call['requests']:,} | {call['p50_ms']} | {call['p99_ms']} | "
            f"{call['statuses']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__)
    parser.add_argument("--duration", type=float, default=180.0, help="seconds of load")
    parser.add_argument("--clients", type=int, default=32, help="concurrent connections")
    parser.add_argument("--swap-every", type=float, default=20.0, help="champion swap period")
    parser.add_argument("--home", type=Path, default=None, help="state folder with a champion")
    parser.add_argument("--url", default=None, help="a running service on this host instead")
    parser.add_argument("--pid", type=int, default=None, help="its process id (for memory)")
    parser.add_argument("--token", default=os.environ.get("SYSTEMHEALER_SERVING__API_TOKEN"))
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args(argv)
    if args.url:
        result = run_soak(args.url, args.duration, args.clients, token=args.token, pid=args.pid)
        figures = result.figures()
    else:
        home = args.home
        if home is None and "SYSTEMHEALER_HOME" in os.environ:
            from benchmarks.run import _home_with_champion

            home = _home_with_champion()
        figures = run(
            home,
            args.results,
            seconds=args.duration,
            clients=args.clients,
            swap_every=args.swap_every,
            token=args.token or "soak-token",
        )
    print(table(figures))
    print(json.dumps(figures, indent=2))
    sys.exit(1 if figures["errors"] else 0)


if __name__ == "__main__":
    main()
