"""Benchmark ``/predict`` against a locally started server (issue 4's targets).

One run: builds full-size artifacts (the 784-1000-2000-5 MLP, random weights, and 50 LoRA
adapters of r = 8 on all three layers) in a temporary embedded configuration, registers
them directly in its SQLite database, starts ``uvicorn`` (one process, uvloop + httptools,
no access log) and drives it with ``--clients`` concurrent keep-alive connections from a
lean raw-HTTP asyncio client (the client shares the machine's cores with the server).
Phases (f), (g), (a), (b) and (c) run interleaved, in that order, ``--rounds-per-phase``
rounds of ``--duration`` seconds each (pooled), so that load drifting on a shared machine
hits them alike; (f) and (g) are the baselines (issue 16), each its own uvicorn process
(``benchmarks/baseline_servers.py``), same JSON body, same images, same clients:

(f) the server a user would write first: a FastAPI ``def`` route, one forward pass of the
    base model per request, no micro-batching
(g) the PEFT way: the same route over one ``peft.PeftModel`` holding the 16 adapters,
    ``set_adapter`` under a lock per request (huggingface/peft#804)

(a) ``GET /predict/ping``: a constant on the same stack, the HTTP ceiling
(b) ``POST /predict`` JSON 28 x 28 pixels, base model
(c) ``POST /predict`` with one of 16 adapters chosen at random per request (cache 16, warm)
(b-bin), (c-bin): the same as (b) and (c) with the binary form (``application/octet-stream``,
    784 uint8 bytes, ids in the query) instead of JSON pixels
(d) cold adapter loads: one request each for 20 adapters never used before, one at a time
    (end-to-end latency, and the server's own load time from ``GET /predict/stats``)
(e) memory: a second server with ``ADAPTER_CACHE_SIZE=4`` cycles the 50 adapters
    (one warm-up round, then ``--rounds`` rounds); RSS of the server before and after.

Targets: (b) >= 0.6 x (a); (c) >= 0.9 x (b); p99 <= 50 ms for (b) and (c); a cold load
<= 20 ms (server-side load time, p99 over the cold requests); RSS growth <= 16 MiB;
(b) >= 3 x (f) and (c) >= 4 x (g), unless the ceiling binds ((f) above a third or (g)
above a quarter of (a): then the ratio is reported and the ceiling named).

Usage: ``python benchmarks/bench_predict.py [--clients 32] [--duration 4]
[--rounds-per-phase 3] [--rounds 4]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.adapter_io import save_adapter  # noqa: E402
from models.checkpoint import save_model  # noqa: E402
from models.classifier import MLP, MLPConfig  # noqa: E402
from models.lora import AdapterWeights, LoraConfig  # noqa: E402

N_ADAPTERS = 50
HOT_ADAPTERS = 16


# ---------------------------------------------------------------- artifacts and server


def build(tmp: Path) -> dict[str, str]:
    """Write the model and adapters, migrate and fill the database; return the server env."""
    env = {
        "DATABASE_URL": f"sqlite:///{tmp / 'bench.db'}",
        "BROKER_URL": f"sqla+sqlite:///{tmp / 'broker.db'}",
        "ARTIFACT_DIR": str(tmp / "artifacts"),
        "API_KEYS": "",
        "LOG_LEVEL": "WARNING",
        "MNIST_DOWNLOAD": "false",
    }
    os.environ.update(env)
    from service.db.engine import session_scope
    from service.db.migrations import upgrade
    from service.db.tables import AdapterRecord, ModelRecord

    upgrade(env["DATABASE_URL"])
    torch.manual_seed(0)
    config = MLPConfig()  # 784-1000-2000-5, 2,797,005 parameters
    model = MLP(config).eval()
    save_model(tmp / "artifacts" / "base", model, (0, 1, 2, 3, 4))
    shapes = {"linear1": (784, 1000), "linear2": (1000, 2000), "linear3": (2000, 5)}
    lora = LoraConfig(r=8, lora_alpha=16.0, target_modules=tuple(shapes))
    with session_scope(env["DATABASE_URL"]) as s:
        s.add(
            ModelRecord(
                id="base",
                kind="pretrain",
                classes=[0, 1, 2, 3, 4],
                architecture=config.to_dict(),
                n_parameters=2_797_005,
                path=str(tmp / "artifacts" / "base"),
            )
        )
        s.flush()  # the adapters' foreign key needs the model row first
        for i in range(N_ADAPTERS):
            A = {m: torch.randn(8, fin) / fin**0.5 for m, (fin, _) in shapes.items()}
            B = {m: torch.randn(fout, 8) * 0.05 for m, (_, fout) in shapes.items()}
            path = tmp / "artifacts" / f"ad{i}"
            save_adapter(path, AdapterWeights(lora, A, B))
            s.add(
                AdapterRecord(
                    id=f"ad{i}",
                    base_model_id="base",
                    r=8,
                    lora_alpha=16.0,
                    target_modules=list(shapes),
                    trainable_parameters=30_312,
                    classes=[5, 6, 7, 8, 9],
                    path=str(path),
                )
            )
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    env: dict[str, str], cache_size: int, app: str = "service.api.app:create_app", workers: int = 1
) -> tuple[subprocess.Popen, int]:
    """Start uvicorn with the app factory ``app`` (``workers`` processes on one socket) on a
    free port and wait until it answers."""
    port = free_port()
    cmd = [
        sys.executable, "-m", "uvicorn", app, "--factory",
        "--host", "127.0.0.1", "--port", str(port), "--loop", "uvloop", "--http", "httptools",
        "--no-access-log", "--log-level", "warning", "--workers", str(workers),
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env={**os.environ, **env, "ADAPTER_CACHE_SIZE": str(cache_size)}
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            status, _ = asyncio.run(one_request(port, http_get("/predict/ping")))
            if status == 200:
                return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the server did not start")


def rss_mib(pid: int) -> float:
    """Resident set size of process ``pid`` (MiB), from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


# ---------------------------------------------------------------- a lean HTTP/1.1 client


def http_get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()


def http_post_raw(path: str, body: bytes) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def http_post_json(path: str, doc: dict) -> bytes:
    body = json.dumps(doc, separators=(",", ":")).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, req: bytes):
    writer.write(req)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    i = head.lower().index(b"content-length:") + 15
    length = int(head[i : head.index(b"\r\n", i)])
    return status, await reader.readexactly(length)


async def one_request(port: int, req: bytes) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        return await _exchange(reader, writer, req)
    finally:
        writer.close()


async def load(
    port: int, make: Callable[[], bytes], clients: int, seconds: float, warmup: float = 0.5
) -> tuple[list[float], int]:
    """``clients`` keep-alive connections in closed loops for ``warmup + seconds``.

    Returns:
        (latencies in seconds of the requests started in the measured window, errors).
    """
    start = time.perf_counter()
    t_measure, t_end = start + warmup, start + warmup + seconds
    latencies: list[float] = []
    errors = 0

    async def client() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while (t0 := time.perf_counter()) < t_end:
                status, _ = await _exchange(reader, writer, make())
                if t0 >= t_measure:
                    latencies.append(time.perf_counter() - t0)
                    errors += status != 200
        finally:
            writer.close()

    await asyncio.gather(*(client() for _ in range(clients)))
    return latencies, errors


def summarize(latencies: list[float], errors: int, seconds: float) -> dict[str, float]:
    """Requests/s and p50/p99 latency (ms) over all rounds of one phase."""
    latencies = sorted(latencies)
    n = len(latencies)
    return {
        "rps": n / seconds,
        "p50_ms": latencies[n // 2] * 1000,
        "p99_ms": latencies[min(n - 1, int(n * 0.99))] * 1000,
        "errors": errors,
        "n": n,
    }


async def stats(port: int) -> dict:
    return json.loads((await one_request(port, http_get("/predict/stats")))[1])


# ---------------------------------------------------------------- the run


def pixels(seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    img = torch.zeros(28, 28, dtype=torch.int64)
    img[4:24, 6:22] = torch.randint(0, 256, (20, 16), generator=g)
    return img.tolist()


def run_main_server(env: dict[str, str], args: argparse.Namespace) -> dict[str, dict]:
    tmp = Path(env["ARTIFACT_DIR"])
    base_env = {**env, "BASELINE_MODEL_DIR": str(tmp / "base")}
    adapters = ",".join(f"ad{i}={tmp / f'ad{i}'}" for i in range(HOT_ADAPTERS))
    plain, plain_port = start_server(base_env, 0, "benchmarks.baseline_servers:create_plain_app")
    peft_proc, peft_port = start_server(
        {**base_env, "BASELINE_ADAPTERS": adapters},
        0,
        "benchmarks.baseline_servers:create_peft_app",
    )
    proc, port = start_server(env, cache_size=HOT_ADAPTERS, workers=args.api_workers)
    try:
        images = [pixels(i) for i in range(8)]
        base_reqs = [
            http_post_json("/predict", {"pixels": im, "model_id": "base"}) for im in images
        ]
        hot = [
            http_post_json("/predict", {"pixels": images[i % 8], "adapter_id": f"ad{i}"})
            for i in range(HOT_ADAPTERS)
        ]
        raw = [bytes(sum(im, [])) for im in images]  # 784 uint8, row-major
        base_raw = [http_post_raw("/predict?model_id=base", r) for r in raw]
        hot_raw = [
            http_post_raw(f"/predict?adapter_id=ad{i}", raw[i % 8]) for i in range(HOT_ADAPTERS)
        ]
        for _ in range(args.api_workers * 4):  # every process loads the 16 adapters
            for req in hot:  # (cache of 16: all stay warm)
                asyncio.run(one_request(port, req))
        phases = {
            "(f) plain def route, base": (plain_port, lambda: random.choice(base_reqs)),
            "(g) PeftModel+lock, 16 ad.": (peft_port, lambda: random.choice(hot)),
            "(a) GET /predict/ping": (port, lambda: http_get("/predict/ping")),
            "(b) /predict base": (port, lambda: random.choice(base_reqs)),
            "(c) /predict 16 adapters": (port, lambda: random.choice(hot)),
            "(b-bin) base, octet-stream": (port, lambda: random.choice(base_raw)),
            "(c-bin) 16 ad., octet-stream": (port, lambda: random.choice(hot_raw)),
        }
        # Interleaved rounds: on a shared machine, load drifts; every phase sees the same drift.
        pooled: dict[str, tuple[list[float], int]] = {name: ([], 0) for name in phases}
        for _ in range(args.rounds_per_phase):
            for name, (phase_port, make) in phases.items():
                lat, err = asyncio.run(load(phase_port, make, args.clients, args.duration))
                pooled[name] = (pooled[name][0] + lat, pooled[name][1] + err)
        seconds = args.duration * args.rounds_per_phase
        rows = {name: summarize(lat, err, seconds) for name, (lat, err) in pooled.items()}
        server = asyncio.run(stats(port))
        rows["(c) /predict 16 adapters"]["mean_batch"] = server["mean_batch"]
        if args.api_workers > 1:  # per-process caches and stats: (d) needs one process
            return rows
        before = server["adapter_cache"]
        cold, loads = [], []
        for i in range(HOT_ADAPTERS, HOT_ADAPTERS + 20):
            req = http_post_json("/predict", {"pixels": images[0], "adapter_id": f"ad{i}"})
            t0 = time.perf_counter()
            status, _ = asyncio.run(one_request(port, req))
            cold.append((time.perf_counter() - t0) * 1000)
            loads.append(asyncio.run(stats(port))["adapter_cache"]["last_load_ms"])
            assert status == 200
        after = asyncio.run(stats(port))["adapter_cache"]
        assert after["loads"] - before["loads"] == 20, "every cold request loaded its adapter"
        loads.sort()
        cold.sort()
        rows["(d) cold adapter load"] = {
            "load_p50_ms": statistics.median(loads),
            "load_p99_ms": loads[-1],
            "request_p50_ms": statistics.median(cold),
            "request_max_ms": cold[-1],
        }
        return rows
    finally:
        for p in (proc, plain, peft_proc):
            p.terminate()
            p.wait(10)


def run_memory_server(env: dict[str, str], args: argparse.Namespace) -> dict[str, float]:
    proc, port = start_server(env, cache_size=4)
    try:
        image = pixels(0)
        reqs = [
            http_post_json("/predict", {"pixels": image, "adapter_id": f"ad{i}"})
            for i in range(N_ADAPTERS)
        ]

        async def cycle() -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            for req in reqs:
                status, _ = await _exchange(reader, writer, req)
                assert status == 200
            writer.close()

        asyncio.run(cycle())  # warm-up round: allocator pools, torch caches
        before = rss_mib(proc.pid)
        for _ in range(args.rounds):
            asyncio.run(cycle())
        after = rss_mib(proc.pid)
        cache = asyncio.run(stats(port))["adapter_cache"]
        return {
            "rss_before_mib": before,
            "rss_after_mib": after,
            "loads": cache["loads"],
            "evictions": cache["evictions"],
            "peak_resident": cache["peak_resident"],
        }
    finally:
        proc.terminate()
        proc.wait(10)


def report(rows: dict[str, dict], memory: dict[str, float]) -> bool:
    print(f"\n{'phase':28} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for name, r in rows.items():
        if "rps" in r:
            print(
                f"{name:28} {r['rps']:9.0f} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} {r['errors']:7d}"
            )
    d = rows.get("(d) cold adapter load", {"load_p50_ms": 0.0, "load_p99_ms": 0.0})
    if "request_p50_ms" in d:
        print(
            f"(d) cold adapter load: server load p50 {d['load_p50_ms']:.2f} ms, max "
            f"{d['load_p99_ms']:.2f} ms; cold request p50 {d['request_p50_ms']:.2f} ms, max "
            f"{d['request_max_ms']:.2f} ms"
        )
    else:
        print("(d) cold adapter load: skipped (several API processes; run with one)")
    print(
        f"mean micro-batch over (b) and (c): {rows['(c) /predict 16 adapters']['mean_batch']:.1f}"
    )
    growth = memory["rss_after_mib"] - memory["rss_before_mib"]
    print(
        f"(e) 50 adapters through a cache of 4: RSS {memory['rss_before_mib']:.1f} -> "
        f"{memory['rss_after_mib']:.1f} MiB ({growth:+.1f}); loads {memory['loads']}, "
        f"evictions {memory['evictions']}, peak resident {memory['peak_resident']}"
    )
    f, g, a, b, c = (rows[k] for k in list(rows)[:5])
    bind_f, bind_g = f["rps"] > a["rps"] / 3, g["rps"] > a["rps"] / 4
    print(
        f"(b)/(f) = {b['rps'] / f['rps']:.2f}"
        f"{' (the ceiling binds: (f) > (a)/3)' if bind_f else ''}"
        f", (c)/(g) = {c['rps'] / g['rps']:.2f}"
        f"{' (the ceiling binds: (g) > (a)/4)' if bind_g else ''}"
    )
    checks = [
        ("(b) >= 3 x (f)", b["rps"] >= 3 * f["rps"] or bind_f, f"{b['rps'] / f['rps']:.2f} x"),
        ("(c) >= 4 x (g)", c["rps"] >= 4 * g["rps"] or bind_g, f"{c['rps'] / g['rps']:.2f} x"),
        ("(b) >= 0.6 x (a)", b["rps"] >= 0.6 * a["rps"], f"{b['rps'] / a['rps']:.2f} x"),
        ("(c) >= 0.9 x (b)", c["rps"] >= 0.9 * b["rps"], f"{c['rps'] / b['rps']:.2f} x"),
        ("p99 (b) <= 50 ms", b["p99_ms"] <= 50, f"{b['p99_ms']:.1f} ms"),
        ("p99 (c) <= 50 ms", c["p99_ms"] <= 50, f"{c['p99_ms']:.1f} ms"),
        *(
            [("cold load <= 20 ms", d["load_p99_ms"] <= 20, f"{d['load_p99_ms']:.1f} ms")]
            if "request_p50_ms" in d
            else []
        ),
        ("no errors", all(r.get("errors", 0) == 0 for r in rows.values()), ""),
        ("RSS flat (<= 16 MiB)", growth <= 16, f"{growth:+.1f} MiB"),
        ("resident <= 4", memory["peak_resident"] <= 4, f"{memory['peak_resident']}"),
    ]
    print()
    for name, ok, value in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {name:24} {value}")
    return all(ok for _, ok, _ in checks)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32, help="concurrent connections")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per phase round")
    parser.add_argument(
        "--rounds-per-phase", type=int, default=3, help="interleaved rounds of (a), (b), (c)"
    )
    parser.add_argument("--rounds", type=int, default=4, help="memory test rounds of 50")
    parser.add_argument(
        "--api-workers",
        type=int,
        default=1,
        help="uvicorn processes of the service's server for (a)-(c) (the baselines keep one)",
    )
    args = parser.parse_args()
    print(f"cpus {os.cpu_count()}, load average {os.getloadavg()[0]:.2f} (1 min) at start")
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    with tempfile.TemporaryDirectory(prefix="bench_predict_") as tmp:
        env = build(Path(tmp))
        rows = run_main_server(env, args)
        memory = run_memory_server(env, args)
    ok = report(rows, memory)
    print(f"load average {os.getloadavg()[0]:.2f} (1 min) at end")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
