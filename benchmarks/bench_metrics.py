"""Benchmark: ``/predict`` throughput with metrics on vs off, in one run (issue 14).

Builds the artifacts of ``bench_predict.py`` (the 784-1000-2000-5 MLP and LoRA adapters of
r = 8) once, starts two servers on them, one with ``METRICS_ENABLED=true`` (HTTP,
serving and cache metrics recorded; request ids always), one with ``METRICS_ENABLED=false``,
and drives them alternately (on, off, on, off, ... ``--rounds`` rounds each of
``--duration`` seconds, so load drifting on a shared machine hits both alike) with
``--clients`` keep-alive connections posting 28 x 28 JSON pixels, half to the base model
and half to one of 8 adapters. Prints requests/s and p50/p99 of each and the ratio
on / off (target >= 0.95), then one scrape of the metrics-on server (its size, time, and
``lora_predictions_total``, warm-up included).

Usage: ``python benchmarks/bench_metrics.py [--clients 16] [--duration 3] [--rounds 4]``
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_predict import (  # noqa: E402
    build,
    http_get,
    http_post_json,
    load,
    one_request,
    pixels,
    start_server,
    summarize,
)

TARGET = 0.95
ADAPTERS = 8


def _scrape_total(text: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("lora_predictions_total{")
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    images = [pixels(i) for i in range(32)]

    def request() -> bytes:
        doc: dict = {"pixels": random.choice(images)}
        if random.random() < 0.5:
            doc["adapter_id"] = f"ad{random.randrange(ADAPTERS)}"
        else:
            doc["model_id"] = "base"
        return http_post_json("/predict", doc)

    with tempfile.TemporaryDirectory() as tmp:
        env = build(Path(tmp))
        servers = {}
        for name, enabled in (("on", "true"), ("off", "false")):
            servers[name] = start_server({**env, "METRICS_ENABLED": enabled}, cache_size=16)
        try:
            runs: dict[str, list] = {"on": [], "off": []}
            errors = {"on": 0, "off": 0}
            for _name, (_, port) in servers.items():  # warm caches (all adapters loaded)
                asyncio.run(load(port, request, args.clients, 1.0))
            for _ in range(args.rounds):
                for name, (_, port) in servers.items():
                    lat, err = asyncio.run(load(port, request, args.clients, args.duration))
                    runs[name] += lat
                    errors[name] += err
            rows = {n: summarize(runs[n], errors[n], args.duration * args.rounds) for n in runs}
            port = servers["on"][1]
            start = time.perf_counter()
            status, body = asyncio.run(one_request(port, http_get("/metrics")))
            scrape_ms = (time.perf_counter() - start) * 1000
        finally:
            for proc, _ in servers.values():
                proc.terminate()
                proc.wait(20)
    for name, row in rows.items():
        print(
            f"metrics {name:>3}: {row['rps']:8.1f} req/s  p50 {row['p50_ms']:6.2f} ms  "
            f"p99 {row['p99_ms']:6.2f} ms  errors {row['errors']}  (n={row['n']})"
        )
    ratio = rows["on"]["rps"] / rows["off"]["rps"]
    print(f"ratio on/off: {ratio:.3f} (target >= {TARGET})")
    text = body.decode()
    print(
        f"scrape: HTTP {status}, {len(body)} bytes in {scrape_ms:.1f} ms; "
        f"lora_predictions_total = {_scrape_total(text):.0f}"
    )
    return 0 if ratio >= TARGET and not any(errors.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
