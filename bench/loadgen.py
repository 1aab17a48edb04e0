"""Closed-loop HTTP load in its own process: N aiohttp clients POST one body for a while; prints one JSON line.

    python bench/loadgen.py URL BODY_FILE --clients 16 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import numpy as np


async def _client(session, url: str, body: bytes, stop_at: float, latencies: list[float], errors: list[int]):
    headers = {"content-type": "application/json"}
    while time.perf_counter() < stop_at:
        start = time.perf_counter()
        try:
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                ok = response.status == 200
                status = response.status
        except Exception:  # a refused or reset connection is an error of the server under test, counted
            ok, status = False, 599
        if ok:
            latencies.append(time.perf_counter() - start)
        else:
            errors.append(status)


async def measure(url: str, body: bytes, clients: int, duration: float, warmup: float = 2.0) -> dict:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        await asyncio.gather(*[_client(session, url, body, time.perf_counter() + warmup, [], [])
                               for _ in range(clients)])
        latencies: list[float] = []
        errors: list[int] = []
        start = time.perf_counter()
        await asyncio.gather(*[_client(session, url, body, start + duration, latencies, errors)
                               for _ in range(clients)])
        elapsed = time.perf_counter() - start
    ms = np.array(latencies or [float("nan")]) * 1000
    return {"rps": len(latencies) / elapsed, "p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)),
            "errors": len(errors), "n": len(latencies)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("body_file")
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--duration", type=float, default=10.0)
    args = parser.parse_args()
    with open(args.body_file, "rb") as fh:
        body = fh.read()
    print(json.dumps(asyncio.run(measure(args.url, body, args.clients, args.duration))))


if __name__ == "__main__":
    main()
