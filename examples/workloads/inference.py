"""High-priority, latency-sensitive inference: requests one at a time, each timed end to end.

A request uploads its input, runs the model's kernels in stages with host work (a
busy-wait standing in for Python pre/post-processing) between the stages, and downloads
the output. The first measured request's output is checked against a numpy float32
reference once the run is over (computing it takes about 0.1 s of CPU, which would
otherwise sit between two measured requests).

    python examples/workloads/inference.py --model transformer --out inference.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import gpu

SEED = 0
#: Distinct inputs the requests cycle through.
INPUTS = 4
RTOL = ATOL = 1e-3
LAYERNORM_EPS = 1e-5


@dataclass
class Model:
    """A model on the device: stages of bound launches between its input and output."""

    stages: list[list[gpu.Launch]]
    input_ptr: gpu.DevicePtr
    output_ptr: gpu.DevicePtr
    input_shape: tuple[int, int]
    output: np.ndarray
    reference: Callable[[np.ndarray], np.ndarray]


def gelu(x: np.ndarray) -> np.ndarray:
    """The tanh approximation of GELU that the kernels use, in float32."""
    return 0.5 * x * (1.0 + np.tanh(np.float32(0.7978845608) * (x + np.float32(0.044715) * x**3)))


def layernorm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Row layernorm as the kernel computes it."""
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + np.float32(LAYERNORM_EPS)) * gamma + beta


def softmax(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis."""
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def weight(rng: np.random.Generator, fan_in: int, fan_out: int) -> np.ndarray:
    """A [fan_in, fan_out] weight (y = x @ w) of normal values, std 1/sqrt(fan_in)."""
    return (rng.standard_normal((fan_in, fan_out)) / math.sqrt(fan_in)).astype(np.float32)


def small(rng: np.random.Generator, n: int, mean: float = 0.0) -> np.ndarray:
    """n normal values of std 0.02 around ``mean`` (biases, layernorm parameters)."""
    return (mean + 0.02 * rng.standard_normal(n)).astype(np.float32)


def build_mlp(kernels: gpu.Kernels, rng: np.random.Generator) -> Model:
    """Batch 32 through three blocks of 1024 -> 4096 (GELU) -> 1024; one stage per GEMM."""
    batch, width, hidden, blocks = 32, 1024, 4096, 3
    dev = kernels.gpu
    layers = [
        (
            weight(rng, width, hidden),
            small(rng, hidden),
            weight(rng, hidden, width),
            small(rng, width),
        )
        for _ in range(blocks)
    ]
    x = dev.alloc(batch * width * 4)
    h = dev.alloc(batch * hidden * 4)
    stages: list[list[gpu.Launch]] = []
    src = x
    for layer in layers:
        w1, b1, w2, b2 = (dev.to_device(a) for a in layer)
        out = dev.alloc(batch * width * 4)
        stages.append([kernels.gemm(src, w1, b1, h, batch, hidden, width, gpu.ACT_GELU)])
        stages.append([kernels.gemm(h, w2, b2, out, batch, width, hidden)])
        src = out

    def reference(inp: np.ndarray) -> np.ndarray:
        y = inp
        for w1, b1, w2, b2 in layers:
            y = gelu(y @ w1 + b1) @ w2 + b2
        return y

    output = np.empty((batch, width), np.float32)
    return Model(stages, x, src, (batch, width), output, reference)


def build_transformer(kernels: gpu.Kernels, rng: np.random.Generator) -> Model:
    """One post-layernorm encoder block: seq 256, d_model 768, 12 heads, FFN 3072.

    Stages: QKV projection | attention | output projection, residual, layernorm |
    FFN1 + GELU | FFN2, residual, layernorm.
    """
    seq, d, heads, ffn = 256, 768, 12, 3072
    hd = d // heads
    dev = kernels.gpu
    wqkv, bqkv = weight(rng, d, 3 * d), small(rng, 3 * d)  # columns: Q | K | V, head-major
    wo, bo = weight(rng, d, d), small(rng, d)
    g1, be1 = small(rng, d, 1.0), small(rng, d)
    w1, b1 = weight(rng, d, ffn), small(rng, ffn)
    w2, b2 = weight(rng, ffn, d), small(rng, d)
    g2, be2 = small(rng, d, 1.0), small(rng, d)

    def buffer(floats: int) -> gpu.DevicePtr:
        return dev.alloc(4 * floats)

    x, qkv, scores = buffer(seq * d), buffer(seq * 3 * d), buffer(heads * seq * seq)
    ctx, attn, res, h = buffer(seq * d), buffer(seq * d), buffer(seq * d), buffer(seq * d)
    f, f2, y = buffer(seq * ffn), buffer(seq * d), buffer(seq * d)
    q, k, v = qkv, gpu.offset(qkv, d), gpu.offset(qkv, 2 * d)
    stages = [
        [kernels.gemm(x, dev.to_device(wqkv), dev.to_device(bqkv), qkv, seq, 3 * d, d)],
        [
            # scores[h] = Q_h @ K_h^T / sqrt(hd); Q_h = qkv[:, h*hd:(h+1)*hd] and so on
            kernels.bgemm(
                q,
                k,
                scores,
                seq,
                seq,
                hd,
                batch=heads,
                ld=(3 * d, 3 * d, seq),
                strides=(hd, hd, seq * seq),
                trans_b=True,
                alpha=1.0 / math.sqrt(hd),
            ),
            kernels.softmax(scores, heads * seq, seq),
            # ctx[:, h*hd:(h+1)*hd] = P_h @ V_h
            kernels.bgemm(
                scores,
                v,
                ctx,
                seq,
                hd,
                seq,
                batch=heads,
                ld=(seq, 3 * d, d),
                strides=(seq * seq, hd, hd),
                trans_b=False,
                alpha=1.0,
            ),
        ],
        [
            kernels.gemm(ctx, dev.to_device(wo), dev.to_device(bo), attn, seq, d, d),
            kernels.add(x, attn, res, seq * d),
            kernels.layernorm(res, dev.to_device(g1), dev.to_device(be1), h, seq, d, LAYERNORM_EPS),
        ],
        [kernels.gemm(h, dev.to_device(w1), dev.to_device(b1), f, seq, ffn, d, gpu.ACT_GELU)],
        [
            kernels.gemm(f, dev.to_device(w2), dev.to_device(b2), f2, seq, d, ffn),
            kernels.add(h, f2, res, seq * d),
            kernels.layernorm(res, dev.to_device(g2), dev.to_device(be2), y, seq, d, LAYERNORM_EPS),
        ],
    ]

    def reference(inp: np.ndarray) -> np.ndarray:
        proj = inp @ wqkv + bqkv

        def split(part: int) -> np.ndarray:  # -> [heads, seq, hd]
            return proj[:, part * d : (part + 1) * d].reshape(seq, heads, hd).transpose(1, 0, 2)

        qh, kh, vh = split(0), split(1), split(2)
        p = softmax(qh @ kh.transpose(0, 2, 1) * np.float32(1.0 / math.sqrt(hd)))
        context = (p @ vh).transpose(1, 0, 2).reshape(seq, d)
        h1 = layernorm(inp + (context @ wo + bo), g1, be1)
        return layernorm(h1 + (gelu(h1 @ w1 + b1) @ w2 + b2), g2, be2)

    output = np.empty((seq, d), np.float32)
    return Model(stages, x, y, (seq, d), output, reference)


def host_work(seconds: float) -> None:
    """Busy-wait on the CPU for ``seconds``, standing in for Python processing."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def serve(dev: gpu.Gpu, model: Model, inp: np.ndarray, host_s: float) -> None:
    """One request: upload, the stages with host work between them, download."""
    dev.upload(model.input_ptr, inp)
    for i, stage in enumerate(model.stages):
        if i:
            host_work(host_s)
        for launch in stage:
            launch()
    dev.download(model.output_ptr, model.output)


def parse_args() -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("mlp", "transformer"), default="transformer")
    parser.add_argument("--requests", type=int, default=200, help="measured requests")
    parser.add_argument("--warmup", type=int, default=20, help="unmeasured requests first")
    parser.add_argument("--think-ms", type=float, default=2.0, help="host time between requests")
    parser.add_argument(
        "--host-us", type=float, default=200.0, help="host busy-wait between a request's stages"
    )
    parser.add_argument("--out", type=Path, help="write the results here as JSON")
    args = parser.parse_args()
    if args.requests < 1 or args.warmup < 0:
        parser.error("--requests must be at least 1 and --warmup at least 0")
    return args


def main() -> int:
    args = parse_args()
    rng = np.random.default_rng(SEED)
    latencies: list[float] = []
    windows: list[list[float]] = []
    with gpu.Gpu() as dev:
        kernels = gpu.Kernels(dev)
        build = build_mlp if args.model == "mlp" else build_transformer
        model = build(kernels, rng)
        inputs = [rng.standard_normal(model.input_shape, dtype=np.float32) for _ in range(INPUTS)]
        dev.sync()  # the weights are on the device
        total = args.warmup + args.requests
        for r in range(total):
            inp = inputs[r % INPUTS]
            wall = time.time()
            start = time.perf_counter()
            serve(dev, model, inp, args.host_us * 1e-6)
            elapsed = time.perf_counter() - start
            if r >= args.warmup:
                latencies.append(elapsed * 1e3)
                windows.append([wall, time.time()])
            if r == args.warmup:  # checked after the run: numpy's reference takes ~0.1 s
                checked_input, checked_output = inp, model.output.copy()
            if r + 1 < total:
                time.sleep(args.think_ms * 1e-3)
    expected = model.reference(checked_input)
    max_err = float(np.max(np.abs(checked_output - expected)))
    checked = bool(np.allclose(checked_output, expected, rtol=RTOL, atol=ATOL))
    kernels_per_request = sum(len(stage) for stage in model.stages)
    result = {
        "program": "inference",
        "model": args.model,
        "requests": args.requests,
        "latencies_ms": latencies,
        "windows": windows,
        "kernels_per_request": kernels_per_request,
        "checked": checked,
        "max_abs_err": max_err,
    }
    if args.out:
        args.out.write_text(json.dumps(result) + "\n")
    lat = np.array(latencies)
    print(
        f"inference {args.model}: {args.requests} requests, {kernels_per_request} kernels each, "
        f"latency mean {lat.mean():.3f} ms, p50 {np.percentile(lat, 50):.3f} ms, "
        f"p99 {np.percentile(lat, 99):.3f} ms, check {'OK' if checked else 'FAILED'} "
        f"(max abs err {max_err:.2e})"
    )
    if not checked:
        print("inference: output does not match the numpy reference", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
