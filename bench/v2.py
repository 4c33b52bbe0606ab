"""Throughput of the Open Inference Protocol's batches against one-image API calls.

`python -m bench.v2 [--batch 64] [--rounds 5] [--strategy bagging]` starts gunicorn as `make
serve` does (one worker, a throwaway SQLite database, 127.0.0.1 on a free port) and, in
alternating rounds, sends one ``POST /v2/models/<strategy>/infer`` of ``batch`` Fashion-MNIST
PNGs in binary mode (``BYTES``: the same upload preprocessing), the same batch as ``UINT8``
canvases, and ``batch`` single ``POST /api/v1/predict`` calls. It prints images/s of each (the
median round) and the ratios. Every image of every request is recorded, as in production.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from bench.load import Client, GunicornServer, cpu_model, fashion_mnist_pngs, predict_job
from models.preprocess import to_uint8_canvas
from serving.inference_protocol import HEADER_LENGTH, MAX_BATCH

log = logging.getLogger(__name__)
OUTPUTS = [{"name": n, "parameters": {"binary_data": True}} for n in ("probabilities", "label")]


def binary_request(datatype: str, shape: list[int], blob: bytes) -> tuple[bytes, dict[str, str]]:
    """A binary-extension infer request (as tritonclient builds it) with binary outputs."""
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "datatype": datatype,
                    "shape": shape,
                    "parameters": {"binary_data_size": len(blob)},
                }
            ],
            "outputs": OUTPUTS,
        }
    ).encode()
    headers = {HEADER_LENGTH: str(len(header)), "Content-Type": "application/octet-stream"}
    return header + blob, headers


def png_batch_request(files: Sequence[bytes]) -> tuple[bytes, dict[str, str]]:
    """One binary ``BYTES`` infer request of PNG files, each element prefixed by its length."""
    elements = b"".join(struct.pack("<I", len(f)) + f for f in files)
    return binary_request("BYTES", [len(files)], elements)


def timed(send: Callable[[], None]) -> float:
    """Wall seconds of one call."""
    started = time.perf_counter()
    send()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64, help=f"images per batch (<= {MAX_BATCH})")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (1-50)")
    parser.add_argument("--strategy", default="bagging")
    args = parser.parse_args(argv)
    if not (1 <= args.batch <= MAX_BATCH and 1 <= args.rounds <= 50):
        parser.error(f"--batch must be 1-{MAX_BATCH} and --rounds 1-50")
    logging.basicConfig(level=logging.WARNING)
    files = fashion_mnist_pngs(args.batch)
    canvases = np.stack([to_uint8_canvas(data) for data in files])
    as_files = png_batch_request(files)
    as_pixels = binary_request("UINT8", list(canvases.shape), canvases.tobytes())
    singles = [predict_job(data, args.strategy) for data in files]
    path = f"/v2/models/{args.strategy}/infer"

    with tempfile.TemporaryDirectory() as workdir:
        env = {"WEB_CONCURRENCY": "1", "LOG_LEVEL": "WARNING"}
        with GunicornServer(Path(workdir), env=env) as server, Client(server.url) as client:

            def send(method: str, url: str, body: bytes, headers: dict[str, str]) -> None:
                status, answer = client.request(method, url, body, headers)
                if status != 200:
                    raise RuntimeError(f"{url} answered {status}: {answer[:300]!r}")

            def v2(request: tuple[bytes, dict[str, str]]) -> Callable[[], None]:
                return lambda: send("POST", path, *request)

            def v1() -> None:
                for job in singles:
                    send(job.method, job.path, job.body or b"", dict(job.headers))

            runs = {"v2 BYTES": v2(as_files), "v2 UINT8": v2(as_pixels), "v1 singles": v1}
            for run in runs.values():  # warm-up: first requests pay for imports and caches
                run()
            seconds: dict[str, list[float]] = {name: [] for name in runs}
            for _ in tqdm(range(args.rounds), desc="rounds", unit="round", leave=False):
                for name, run in runs.items():
                    seconds[name].append(timed(run))
            rate = {name: args.batch / statistics.median(s) for name, s in seconds.items()}
    out = [
        f"{cpu_model()}; torch {torch.__version__}; gunicorn, 1 worker; strategy "
        f"{args.strategy}; {args.batch} images per round; median of {args.rounds} rounds",
        f"/v2 infer, one batch of {args.batch}, binary BYTES (PNG files):  "
        f"{rate['v2 BYTES']:8.1f} images/s",
        f"/v2 infer, one batch of {args.batch}, binary UINT8 (28x28 pixels):"
        f"{rate['v2 UINT8']:8.1f} images/s",
        f"/api/v1/predict, {args.batch} single calls:                   "
        f"{rate['v1 singles']:8.1f} images/s",
        f"ratio v2 BYTES / v1: {rate['v2 BYTES'] / rate['v1 singles']:.2f}x; "
        f"v2 UINT8 / v1: {rate['v2 UINT8'] / rate['v1 singles']:.2f}x",
    ]
    sys.stdout.write("\n".join(out) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
