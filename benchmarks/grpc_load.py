"""gRPC load generator of benchmarks/serve_bench.py: wrk's job for the Open Inference Protocol's gRPC
service (`inference.GRPCInferenceService/ModelInfer`, KServe v2 / Triton).

    python benchmarks/grpc_load.py --port 8001 --images 1 --connections 64 --seconds 3

`--connections` clients, each on its own channel (its own TCP connection, as wrk's connections
are), send the same request back to back for `--seconds`, and one JSON line is printed with the
keys wrk_post.lua prints. The request is serialized once with Triton's own generated stubs
(tritonclient.grpc.service_pb2) and sent as bytes, and answers are not parsed (only their status
is read): the load generator shares the 2 cores with the server, so it does as little as it can.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import grpc
import numpy as np
from tritonclient.grpc import service_pb2

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
UNLIMITED = [
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
    ("grpc.use_local_subchannel_pool", 1),
]  # one TCP connection per client, not one shared


def infer_request(model: str, images: int) -> bytes:
    """A ModelInfer request for `images` random images, rows as raw little-endian FP32."""
    rows = (np.random.default_rng(images).integers(0, 256, (images, 28, 28)) / 255).astype(np.float32)
    request = service_pb2.ModelInferRequest(
        model_name=model,
        inputs=[service_pb2.ModelInferRequest.InferInputTensor(name="rows", datatype="FP32", shape=[images, 28, 28])],
        raw_input_contents=[rows.tobytes()],
    )
    return request.SerializeToString()


async def client(target: str, payload: bytes, until: float, latencies: list[float], failures: list[str]) -> None:
    async with grpc.aio.insecure_channel(target, options=UNLIMITED) as channel:
        infer = channel.unary_unary(MODEL_INFER)  # no (de)serializers: bytes in, bytes out
        while time.perf_counter() < until:
            started = time.perf_counter()
            try:
                await infer(payload, timeout=10)
            except grpc.aio.AioRpcError as exc:
                failures.append(exc.code().name)
                if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    await asyncio.sleep(0.01)
                continue
            latencies.append(time.perf_counter() - started)


async def load(port: int, model: str, images: int, connections: int, seconds: float) -> dict:
    payload = infer_request(model, images)
    latencies: list[float] = []
    failures: list[str] = []
    started = time.perf_counter()
    until = started + seconds
    await asyncio.gather(
        *(client(f"127.0.0.1:{port}", payload, until, latencies, failures) for _ in range(connections))
    )
    elapsed = time.perf_counter() - started
    p50, p99 = np.percentile(latencies, [50, 99]) * 1e6 if latencies else (0.0, 0.0)
    not_ok = [code for code in failures if code not in ("UNAVAILABLE", "DEADLINE_EXCEEDED")]
    return {
        "requests": len(latencies) + len(failures),
        "seconds": elapsed,
        "non_2xx": len(not_ok),
        "socket_errors": len(failures) - len(not_ok),
        "p50_us": int(p50),
        "p99_us": int(p99),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", default="rowrnn")
    parser.add_argument("--images", type=int, default=1)
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(load(args.port, args.model, args.images, args.connections, args.seconds))), flush=True)


if __name__ == "__main__":
    main()
