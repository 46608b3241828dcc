"""Load test of `embzoo serve` on loopback: the server runs in-process (uvicorn on 127.0.0.1, a free port), N
concurrent clients post /v1/embeddings requests of 1 to max_inputs texts for a fixed time, and every answer is
checked against the model's offline encode. Reports throughput, p50 / p99 latency, errors and how many requests
each merged forward held.

    python bench/load_test.py [--model M] [--device cpu] [--clients 8] [--seconds 10]

Bounded: loopback only, at most MAX_CLIENTS clients for at most MAX_SECONDS.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import socket
import threading
import time
from typing import Any

import numpy as np

MAX_CLIENTS = 256
MAX_SECONDS = 600.0
HOST = "127.0.0.1"
TOLERANCE = 1e-5  # an answer vs offline encode: packing neighbours change float32 rounding only
WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "rotary", "position", "embeddings"]


def texts(count: int = 64, seed: int = 0) -> list[str]:
    """A fixed pool of texts, 1 to 120 words."""
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(1, 120))) for _ in range(count)]


def _start(app: Any) -> tuple[Any, threading.Thread, int]:
    """uvicorn serving app on a free loopback port, in a thread; returns once it accepts connections."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((HOST, 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start within 60 s")
        time.sleep(0.02)
    return server, thread, sock.getsockname()[1]


async def _clients(url: str, pool: list[str], expected: np.ndarray, clients: int, seconds: float, max_inputs: int):
    import httpx

    latencies: list[float] = []
    errors: list[str] = []
    inputs = 0

    async def client(seed: int, http: httpx.AsyncClient) -> None:
        nonlocal inputs
        rng = random.Random(seed)
        stop = time.monotonic() + seconds
        while time.monotonic() < stop:
            idx = rng.sample(range(len(pool)), rng.randint(1, max_inputs))
            start = time.perf_counter()
            try:
                r = await http.post("/v1/embeddings", json={"input": [pool[i] for i in idx]})
            except httpx.HTTPError as error:
                errors.append(f"{type(error).__name__}: {error}")
                continue
            took = time.perf_counter() - start
            if r.status_code != 200:
                errors.append(f"HTTP {r.status_code}: {r.text[:200]}")
                continue
            got = np.asarray([d["embedding"] for d in r.json()["data"]], dtype=np.float32)
            worst = float(np.abs(got - expected[idx]).max())
            if worst > TOLERANCE:
                errors.append(f"answer differs from offline encode by {worst:.2e}")
                continue
            latencies.append(took)  # throughput and latency count correct answers only
            inputs += len(idx)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits, trust_env=False) as http:
        await asyncio.gather(*(client(seed, http) for seed in range(clients)))
        metrics = (await http.get("/metrics")).text
    return latencies, errors, inputs, metrics


def _metric(text: str, name: str) -> float:
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, flags=re.M))


def run_load_test(
    model: Any,
    *,
    clients: int = 8,
    seconds: float = 10.0,
    max_inputs: int = 8,
    pool_size: int = 64,
    settings: Any = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Serve the embedder on loopback and load it for `seconds` with `clients` concurrent clients, each request
    1 to max_inputs texts of a pool of pool_size; returns requests and inputs answered correctly, errors (the first
    few messages too), throughput and latency percentiles (ms) of the correct answers."""
    from embzoo.integrations.server import ServerSettings, create_app

    if not 1 <= clients <= MAX_CLIENTS or not 0 < seconds <= MAX_SECONDS:
        raise ValueError(f"clients must be in 1..{MAX_CLIENTS} and seconds in (0, {MAX_SECONDS}]")
    if not 1 <= max_inputs <= pool_size:
        raise ValueError(f"max_inputs must be in 1..pool_size ({pool_size}): a request samples distinct pool texts")
    pool = texts(pool_size, seed=seed)
    expected = model.encode(pool)
    server, thread, port = _start(create_app({"model": model}, settings or ServerSettings()))
    try:
        start = time.perf_counter()
        latencies, errors, inputs, metrics = asyncio.run(
            _clients(f"http://{HOST}:{port}", pool, expected, clients, seconds, max_inputs)
        )
        elapsed = time.perf_counter() - start
    finally:
        server.should_exit = True
        thread.join(timeout=60)
    ms = np.asarray(latencies) * 1000
    batches = _metric(metrics, "embzoo_batch_requests_count")
    return {
        "clients": clients,
        "seconds": round(elapsed, 2),
        "requests": len(latencies),
        "inputs": inputs,
        "errors": len(errors),
        "error_messages": errors[:5],
        "requests_per_s": round(len(latencies) / elapsed, 1),
        "inputs_per_s": round(inputs / elapsed, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 2) if len(ms) else None,
        "p99_ms": round(float(np.percentile(ms, 99)), 2) if len(ms) else None,
        "requests_per_batch": round(_metric(metrics, "embzoo_batch_requests_sum") / batches, 2) if batches else None,
    }


def main(argv: list[str] | None = None) -> None:
    import embzoo

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="hub id or folder (default: the bundled all-MiniLM-L6-v2)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--max-inputs", type=int, default=8, help="texts per request: 1 to this many")
    args = parser.parse_args(argv)
    model = embzoo.load(args.model, device=args.device, dtype="float32")
    report = run_load_test(model, clients=args.clients, seconds=args.seconds, max_inputs=args.max_inputs)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
