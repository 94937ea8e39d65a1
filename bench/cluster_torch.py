"""SeTok's DPC-KNN written with PyTorch tensor ops (as the released code does, with the spec's
deterministic tie-break instead of noise), timed on the GPU with torch.cuda.synchronize.
The yardstick for the CUDA kernels in native/trt/setok: same features (Mulberry32, as in
test/setok/helpers.ts PlantedFeatures(27, 27, 1152, 5, 21, 0.5)), same sizes.

Usage: python3 bench/cluster_torch.py [--reps 50]   (prints one JSON line)
"""
import argparse
import json
import math
import struct
import time

import torch


def mulberry32(seed):
    a = seed & 0xFFFFFFFF
    while True:
        a = (a + 0x6D2B79F5) & 0xFFFFFFFF
        t = a
        t = ((t ^ (t >> 15)) * (t | 1)) & 0xFFFFFFFF
        t ^= (t + (((t ^ (t >> 7)) * (t | 61)) & 0xFFFFFFFF)) & 0xFFFFFFFF
        yield ((t ^ (t >> 14)) & 0xFFFFFFFF) / 4294967296.0


def planted(rows, cols, dim, regions, seed, noise):
    r = mulberry32(seed)
    f32 = lambda v: struct.unpack("f", struct.pack("f", v))[0]  # the TS/C++ generators keep centres in float32
    centres = [[f32((next(r) * 2 - 1) * 2) for _ in range(dim)] for _ in range(regions)]
    out = []
    for p in range(rows * cols):
        region = min(regions - 1, (p % cols) * regions // cols)
        c = centres[region]
        out.extend(c[i] + (next(r) * 2 - 1) * noise for i in range(dim))
    return torch.tensor(out, dtype=torch.float32).reshape(rows * cols, dim)


def cluster(x, k, threshold, fallback):
    n, c = x.shape
    d = torch.cdist(x, x) / math.sqrt(c)
    nearest, _ = torch.topk(d, k, dim=-1, largest=False)
    rho = torch.exp(-(nearest ** 2).mean(dim=-1))
    idx = torch.arange(n, device=x.device)
    higher = (rho[None, :] > rho[:, None]) | ((rho[None, :] == rho[:, None]) & (idx[None, :] < idx[:, None]))
    dmax = d.max()
    delta = torch.where(higher, d, dmax).min(dim=-1).values
    score = rho * delta
    centres = torch.nonzero(score > threshold).flatten()
    if centres.numel() == 0:
        centres = torch.sort(torch.topk(score, min(fallback, n)).indices).values
    labels = torch.argmin(d[:, centres], dim=-1)
    labels[centres] = torch.arange(centres.numel(), device=x.device)
    return centres, labels, score


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=50)
    args = ap.parse_args()
    dev = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 distances, as the kernels compute
    x = planted(27, 27, 1152, 5, 21, 0.5).to(dev)
    for _ in range(5):
        cluster(x, 64, 0.55, 64)
    torch.cuda.synchronize()
    times = []
    for _ in range(args.reps):
        t0 = time.perf_counter()
        centres, labels, _ = cluster(x, 64, 0.55, 64)
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    print(json.dumps({
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "n": 729, "dim": 1152, "k": 64,
        "median_ms": round(times[len(times) // 2], 4),
        "min_ms": round(times[0], 4),
        "centres": centres.numel(),
        "centres_list": centres.tolist(),
    }))


if __name__ == "__main__":
    main()
