"""Load test of `vqt serve` on loopback: a bounded asyncio client, good and bad requests mixed, then a kill/restart.

The server is a real `vqt serve` process (uvicorn) serving `--tasks` VQT adapters (Q = 1, random weights) of one
backbone. `--clients` concurrent clients send JSON requests (one base64 image each) until `--requests` are sent or
`--seconds` pass; every `--bad-every`-th request is a bad one (not an image, truncated, 1x1, a 20000x20000 header,
an unknown task, a missing field, bad base64, a body over the limit), which must get a 4xx. Every good answer is
compared with the same adapters run in this process (`MultiTaskModel`, top-1 class per task; scores within 1e-4):
a wrong answer is counted, never hidden. Reported: throughput, p50/p95/p99 latency of good requests, errors.

Phase 2 repeats the load and SIGKILLs the server when a third of the requests are sent, restarts it and keeps the
clients
going: clients see connection errors while it is down, never a wrong answer, and good requests succeed again after
the restart (nothing on disk to corrupt: the server writes no file). A request that gets no answer is retried
after 0.5 s and counted as a connection error.

    python benchmarks/serve_load.py --out benchmarks/results/serve_load_cpu.md
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime
import io
import os
import platform
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import httpx
import torch
from PIL import Image

from vqt.backbone.sources import create_backbone
from vqt.checkpoint.adapter import save_adapter
from vqt.data.transforms import describe_transform
from vqt.inference.multitask import load_adapters
from vqt.inference.predict import inference_transform
from vqt.methods.vqt import VQT


def png(width: int, height: int, seed: int) -> bytes:
    generator = torch.Generator().manual_seed(seed)
    pixels = (torch.rand(height, width, 3, generator=generator) * 255).to(torch.uint8).numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def huge_header(width: int, height: int) -> bytes:
    data = bytearray(png(4, 4, 0))
    ihdr = data[12:29]
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)) & 0xFFFFFFFF)
    return bytes(data)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


BAD_REQUESTS = [
    {"json": {"image": b64(b"not an image at all")}},
    {"json": {"image": b64(png(64, 64, 1)[:80])}},
    {"json": {"image": b64(png(1, 1, 2))}},
    {"json": {"image": b64(huge_header(20000, 20000))}},
    {"json": {"image": b64(png(64, 64, 3)), "tasks": ["no-such-task"]}},
    {"json": {"top_k": 1}},
    {"json": {"image": "%%%"}},
    {"content": b"\0" * (21 * 2**20), "headers": {"content-type": "image/png"}},
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(adapters: list[Path], port: int, threads: int, max_batch: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    command = [sys.executable, "-m", "vqt", "serve", *map(str, adapters), "--port", str(port),
               "--max-batch", str(max_batch), "--precision", "fp32"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"vqt serve exited: {process.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.3)
    process.kill()
    raise SystemExit("vqt serve did not come up in 300 s")


class Tally:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.good_errors = 0  # good requests answered with another status than 200
        self.connection_errors = 0  # attempts that got no answer (the server down): retried, not counted as sent
        self.wrong = 0
        self.bad_4xx = 0
        self.bad_other = 0
        self.sent = 0
        self.ok_after_restart = 0


async def client(index: int, url: str, images: list[str], expected: list[dict], args, tally: Tally,
                 stop_at: float, restarted: asyncio.Event | None) -> None:
    async with httpx.AsyncClient(timeout=60) as http:
        count = 0
        while tally.sent < args.requests and time.monotonic() < stop_at:
            tally.sent += 1
            count += 1
            bad = count % args.bad_every == 0
            if bad:
                request = BAD_REQUESTS[(index + count) % len(BAD_REQUESTS)]
                try:
                    answer = await http.post(url, **request)
                    if 400 <= answer.status_code < 500 and "error" in answer.json():
                        tally.bad_4xx += 1
                    else:
                        tally.bad_other += 1
                except httpx.TransportError:
                    tally.connection_errors += 1
                    tally.sent -= 1  # not answered: retried after a pause (the server may be restarting)
                    await asyncio.sleep(0.5)
                continue
            which = (index * 7919 + count) % len(images)
            start = time.perf_counter()
            try:
                answer = await http.post(url, json={"image": images[which], "top_k": 1})
            except httpx.TransportError:
                tally.connection_errors += 1
                tally.sent -= 1  # not answered: retried after a pause (the server may be restarting)
                await asyncio.sleep(0.5)
                continue
            if answer.status_code != 200:
                tally.good_errors += 1
                continue
            tally.latencies.append(time.perf_counter() - start)
            got = answer.json()["predictions"][0]["tasks"]
            for task, want in expected[which].items():
                top = got[task][0]
                if top["index"] != want["index"] or abs(top["score"] - want["score"]) > 1e-4:
                    tally.wrong += 1
                    break
            if restarted is not None and restarted.is_set():
                tally.ok_after_restart += 1


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


async def load(url: str, images, expected, args, *, kill: tuple | None = None) -> tuple[Tally, float]:
    tally = Tally()
    restarted = asyncio.Event() if kill else None
    start = time.monotonic()
    stop_at = start + args.seconds
    workers = [asyncio.create_task(client(i, url, images, expected, args, tally, stop_at, restarted))
               for i in range(args.clients)]
    if kill:
        holder, restart = kill
        while tally.sent < args.requests // 3 and time.monotonic() < stop_at:  # a third of the load, then kill
            await asyncio.sleep(0.01)
        holder[0].send_signal(signal.SIGKILL)
        holder[0].wait()
        await asyncio.sleep(1.0)  # clients hit a dead port meanwhile
        holder[0] = await asyncio.to_thread(restart)
        restarted.set()
    await asyncio.gather(*workers)
    return tally, time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_small_patch16_224")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--bad-every", type=int, default=5)
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    spec = f"{args.model}@random"
    tmp = Path(tempfile.mkdtemp(prefix="vqt-serve-load-"))
    backbone = create_backbone(spec, img_size=args.img_size)
    transform = describe_transform("backbone", backbone, img_size=args.img_size)
    adapters = []
    for index in range(args.tasks):
        torch.manual_seed(index)
        model = VQT(backbone, num_classes=10, num_queries=1)
        with torch.no_grad():
            model.head.weight.normal_()
        adapters.append(save_adapter(model, tmp / f"task{index}", backbone_spec=spec, transform=transform))
    raw = [png(96, 96, 100 + i) for i in range(32)]
    images = [b64(data) for data in raw]
    reference = load_adapters(adapters)
    preprocess = inference_transform(reference.configs["task0"])
    with torch.inference_mode():
        logits = reference.logits(torch.stack([preprocess(Image.open(io.BytesIO(d)).convert("RGB")) for d in raw]))
    expected = []
    for row in range(len(raw)):
        entry = {}
        for task, value in logits.items():
            score, index = value[row].softmax(-1).max(-1)
            entry[task] = {"index": int(index), "score": float(score)}
        expected.append(entry)

    port = free_port()
    url = f"http://127.0.0.1:{port}/predict"
    holder = [start_server(adapters, port, args.threads, args.max_batch)]
    try:
        steady, seconds = asyncio.run(load(url, images, expected, args))
        killed, kill_seconds = asyncio.run(load(
            url, images, expected, args,
            kill=(holder, lambda: start_server(adapters, port, args.threads, args.max_batch))))
    finally:
        holder[0].kill()
        holder[0].wait()

    def row(name: str, tally: Tally, wall: float) -> str:
        lat = [x * 1000 for x in tally.latencies]
        return (f"| {name} | {tally.sent} | {len(lat)} | {len(lat) / wall:.1f} | {percentile(lat, 50):.0f} | "
                f"{percentile(lat, 95):.0f} | {percentile(lat, 99):.0f} | {tally.good_errors} | "
                f"{tally.connection_errors} | {tally.wrong} | {tally.bad_4xx} | {tally.bad_other} |")

    lines = [
        "| phase | requests sent | good answered | good answers/s | p50 ms | p95 ms | p99 ms | good failed | "
        "connection errors | wrong answers | bad → 4xx | bad → other |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        row("steady", steady, seconds),
        row("SIGKILL after a third, restart", killed, kill_seconds),
    ]
    section = "\n".join([
        f"## {datetime.date.today().isoformat()}: {platform.machine()} CPU, {args.threads} threads, "
        f"torch {torch.__version__}; {spec} at {args.img_size} px, {args.tasks} VQT tasks (Q = 1), "
        f"{args.clients} clients, every {args.bad_every}th request bad, max batch {args.max_batch}",
        "",
        f"Command: `python {' '.join(sys.argv)}`",
        "",
        *lines,
        "",
        f"After the restart {killed.ok_after_restart} good requests were answered correctly.",
        "",
    ])
    print(section)
    if args.out:
        title = "# `vqt serve` under load (`benchmarks/serve_load.py`)\n\n"
        previous = args.out.read_text().removeprefix(title) if args.out.is_file() else ""
        args.out.write_text(title + section + "\n" + previous)
    if steady.wrong or killed.wrong or steady.good_errors or steady.bad_other or killed.bad_other:
        raise SystemExit("wrong answers or errors on good requests: see the table")


if __name__ == "__main__":
    main()
